"""The temporal benchmark suite end to end on a few sentences, and its config checks."""

import json

import pytest
import torch

from alignfuse.bench.temporal import frame_map, is_temporal_suite, run_temporal_suite
from alignfuse.data.espeak import espeak_available
from alignfuse.errors import ConfigError

SUITE = """
name: tiny_temporal
kind: temporal
speech:
  data: {n_sentences: 3, renderings: 2}
  methods:
    - {name: uniform, method: uniform}
    - {name: linear_stretch, method: linear}
    - {name: dtw_mfcc, method: dtw, features: mfcc}
    - {name: soft_dtw_mfcc, method: soft_dtw, features: mfcc, args: {gamma: 1.0}}
"""


@pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng not installed (apt-get install espeak-ng)"
)
def test_temporal_suite_runs_and_dtw_beats_the_baselines(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    assert is_temporal_suite(str(suite)) and is_temporal_suite("temporal")
    rows = run_temporal_suite(str(suite), tmp_path / "out", log=lambda m: None)
    for name in (
        "results.jsonl",
        "leaderboard.md",
        "report.md",
        "alignment_path.png",
        "boundaries.png",
        "errors.png",
    ):
        assert (tmp_path / "out" / name).is_file(), name
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == len(rows) == 8
    mae = {(r["task"], r["name"]): r["metrics"]["mae_ms"] for r in rows}
    for task in ("voice_to_voice", "text_to_speech"):
        assert mae[(task, "dtw_mfcc")] < mae[(task, "linear_stretch")] < mae[(task, "uniform")]
    json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])


def test_frame_map_of_identical_features_is_the_identity():
    f = torch.randn(30, 5, dtype=torch.float64)
    for method, args in (("dtw", {}), ("soft_dtw", {"gamma": 0.01}), ("linear", {})):
        mapping, _ = frame_map(method, f, f, args)
        assert abs(mapping - torch.arange(30).numpy()).max() < 1e-3, method


def test_unknown_keys_and_methods_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: temporal\nspeach: {}\n")
    with pytest.raises(ConfigError, match="did you mean 'speech'"):
        run_temporal_suite(str(bad), tmp_path / "o")
    bad.write_text("name: x\nkind: temporal\nspeech: {methods: [{name: a, method: dtww}]}\n")
    with pytest.raises(ConfigError, match="did you mean 'dtw'"):
        run_temporal_suite(str(bad), tmp_path / "o")
