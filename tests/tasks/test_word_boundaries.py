"""The ``word_boundaries`` task (suite ``temporal``): warping methods carry word boundaries
between utterances; run by the suite runner without the loop."""

from __future__ import annotations

import json

import pytest
import torch

from alignfuse.bench import load_suite, run_suite
from alignfuse.config import load_config
from alignfuse.data.espeak import espeak_available
from alignfuse.errors import ConfigError
from alignfuse.tasks import create_task
from alignfuse.tasks.word_boundaries import frame_map, pairs, predict_boundaries

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng not installed (apt-get install espeak-ng)"
)

SUITE = """
name: tiny_temporal
base:
  task: {name: word_boundaries}
  data: {name: spoken, args: {n_sentences: 3, renderings: 2}}
experiments:
  - {name: uniform, model: {name: uniform}}
  - {name: linear_stretch, model: {name: linear}}
  - {name: dtw_mfcc, model: {name: dtw, args: {features: mfcc}}}
  - {name: soft_dtw_mfcc, model: {name: soft_dtw, args: {features: mfcc, gamma: 1.0}}}
"""


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    from alignfuse.data.spoken import load_spoken

    if not espeak_available():
        pytest.skip("libespeak-ng not installed")
    return load_spoken(n_sentences=3, renderings=2, cache_dir=tmp_path_factory.mktemp("cache"))


@needs_espeak
def test_suite_runs_and_dtw_beats_the_baselines(tmp_path, monkeypatch, spoken):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    rows = run_suite(load_suite(str(suite)), out, log=lambda m: None)
    for name in (
        "results.jsonl",
        "leaderboard.md",
        "report.md",
        "alignment_path.png",
        "boundaries.png",
        "errors.png",
    ):
        assert (out / name).is_file(), name
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows) == 4
    mae = {r["name"]: r["metrics"] for r in rows}
    for p in ("voice_to_voice", "text_to_speech"):
        assert (
            mae["dtw_mfcc"][f"{p}/mae_ms"]
            < mae["linear_stretch"][f"{p}/mae_ms"]
            < mae["uniform"][f"{p}/mae_ms"]
        )
    # the DTW row is the mean error of the boundaries predicted pair by pair
    errors = []
    for src, dst in pairs(spoken, "voice_to_voice"):
        pred, _ = predict_boundaries("dtw", "mfcc", {}, src, dst, 10.0)
        errors += [abs(pred[k] - dst.boundaries()[k]) for k in pred]
    assert mae["dtw_mfcc"]["voice_to_voice/mae_ms"] == pytest.approx(sum(errors) / len(errors))
    assert mae["dtw_mfcc"]["voice_to_voice/n_boundaries"] == len(errors)
    json.loads((out / "results.jsonl").read_text().splitlines()[0])
    board = (out / "leaderboard.md").read_text()
    assert board.count("| voice_to_voice |") == board.count("| text_to_speech |") == 4


def test_frame_map_of_identical_features_is_the_identity():
    f = torch.randn(30, 5, dtype=torch.float64)
    for method, args in (("dtw", {}), ("soft_dtw", {"gamma": 0.01}), ("linear", {})):
        mapping, _ = frame_map(method, f, f, args)
        assert abs(mapping - torch.arange(30).numpy()).max() < 1e-3, method


@needs_espeak
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=dtww", "unknown temporal method 'dtww' .*did you mean 'dtw'"),
        ("model.args={features: mel}", "features must be one of mfcc, logmel"),
        ("model.args={gama: 1.0}", "method 'dtw' has no argument 'gama'"),
        ("task.args.hop=5", "unknown config key 'task.args.hop'"),
        ("task.args.hop_ms=0", "hop_ms must be positive"),
    ],
)
def test_bad_settings_are_named(spoken, override, message):
    cfg = load_config(
        None, ["task.name=word_boundaries", "data.name=spoken", "model.name=dtw", override]
    )
    with pytest.raises(ConfigError, match=message):
        create_task(cfg, spoken)
