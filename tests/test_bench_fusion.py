"""The fusion suite end to end on tiny data."""

import pytest

from alignfuse.bench.fusion import is_fusion_suite, run_fusion_suite
from alignfuse.errors import ConfigError

SUITE = """
name: tiny_fusion
kind: fusion
data: {n_train: 96, n_val: 32, n_test: 48, n_winoground: 4}
pretrain:
  model: {embed_dim: 16, args: {image_args: {width: 8, out_dim: 16}, text_args: {word_dim: 8, hidden: 8}}}
  train: {epochs: 1, batch_size: 32}
vqa: {epochs: 1, batch_size: 64, width: 16}
matching: {epochs: 1, batch_size: 64, width: 16, fusions: [early, single_stream]}
fusions: [early, late, san, single_stream]
args:
  san: {query: question, width: 16}
  single_stream: {width: 16, heads: 2, layers: 1}
retrieval: {k: 4, scorers: [scan, filip, imram], args: {imram: {steps: 2}}, train: {epochs: 1, batch_size: 16}}
"""


@pytest.mark.slow
def test_fusion_suite_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    assert is_fusion_suite(str(suite)) and is_fusion_suite("fusion")
    rows = run_fusion_suite(str(suite), tmp_path / "out", log=lambda m: None)
    for name in (
        "results.jsonl",
        "leaderboard.md",
        "report.md",
        "vqa.png",
        "san_attention.png",
        "scan_attention.png",
    ):
        assert (tmp_path / "out" / name).is_file(), name
    vqa = [r for r in rows if r["task"] == "vqa"]
    assert [r["name"] for r in vqa] == ["early", "late", "san", "single_stream"]
    for r in vqa:
        assert 0.0 <= r["metrics"]["acc"] <= 1.0 and r["fusion_params"] > 0
    match = [r for r in rows if r["task"] == "matching"]
    assert [r["name"] for r in match] == ["early", "single_stream"]
    assert all(0.0 <= r["metrics"]["hard_negative_acc"] <= 1.0 for r in match)
    names = [r["name"] for r in rows if r["task"] == "retrieval"]
    assert names[0] == "dual_encoder" and any("scan" in n for n in names)
    trained = [r for r in rows if r["task"] == "retrieval" and "imram" in r["name"]]
    assert trained and trained[0]["train_seconds"] > 0  # trained as a matcher before re-ranking


def test_unknown_keys_and_fusions_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: fusion\nfusion: [early]\n")
    with pytest.raises(ConfigError, match="did you mean 'fusions'"):
        run_fusion_suite(str(bad), tmp_path / "o")
    bad.write_text("name: x\nkind: fusion\nfusions: [earli]\n")
    with pytest.raises(ConfigError, match="did you mean 'early'"):
        run_fusion_suite(str(bad), tmp_path / "o")


def test_perturb_makes_word_level_hard_negatives():
    import numpy as np

    from alignfuse.bench.fusion import perturb

    rng = np.random.default_rng(0)
    assert (
        perturb("a red circle left of a blue square", rng) == "a blue circle left of a red square"
    )
    assert perturb("a red circle left of a red square", rng) == "a red square left of a red circle"
    one = perturb("a red circle", rng)
    assert one != "a red circle" and one.endswith(" circle")
