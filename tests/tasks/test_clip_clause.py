"""The ``clip_clause`` task (suite ``temporal``): the embedder and matcher trained once per
suite and shared, each localisation method an experiment; equal to the functions it wraps."""

from __future__ import annotations

import pytest

from alignfuse.bench import load_suite, run_suite
from alignfuse.config import load_config
from alignfuse.data.clips import load_clips
from alignfuse.errors import ConfigError
from alignfuse.tasks import create_task
from alignfuse.tasks.clip_clause import ClipClauseData, localize, scores, train_embedder

SUITE = """
name: tiny_clips
base:
  task: {name: clip_clause, args: {embedder: {epochs: 2}, matcher: {epochs: 1}}}
  data: {name: clips, args: {n_train: 24, n_val: 2, n_test: 10, use_cache: false}}
experiments:
  - {name: uniform, model: {name: uniform}}
  - {name: dtw, model: {name: dtw}}
  - {name: ot, model: {name: ot, args: {ot_reg: 0.1}}}
  - {name: graph_dtw, model: {name: graph_dtw}}
"""


def test_suite_trains_once_and_matches_the_functions(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    rows = {r["name"]: r for r in run_suite(load_suite(str(suite)), out, log=lambda m: None)}
    assert set(rows) == {"uniform", "dtw", "ot", "graph_dtw"}
    assert rows["uniform"]["train_seconds"] < 0.5  # needs no embeddings
    # the dtw row equals the embedder trained by hand and DTW localisation
    data = load_clips(n_train=24, n_val=2, n_test=10, use_cache=False)
    embed, _ = train_embedder(data["train"], data.vocabulary(), epochs=2, progress=False)
    preds = [
        localize("dtw", len(c.frames), *embed(c), n_clauses=len(c.clauses))
        for c in data["test"].clips
    ]
    assert rows["dtw"]["metrics"] == pytest.approx(scores(data["test"].clips, preds))
    assert 0 <= rows["graph_dtw"]["metrics"]["frame_acc"] <= 1
    assert (out / "clip_timelines.png").stat().st_size > 3000
    assert "## Clips to clauses" in (out / "report.md").read_text()


def test_bad_settings_are_named():
    data = ClipClauseData(load_clips(n_train=4, n_val=1, n_test=2, use_cache=False))
    base = ["task.name=clip_clause", "data.name=clips"]
    for override, message in [
        ("model.name=dtww", "unknown localisation method 'dtww'"),
        ("task.args={embedder: {epoch: 1}}", "unknown config key 'task.args.embedder.epoch'"),
        ("model.args={ot_reg: 0.1}", "method 'dtw' has no argument 'ot_reg'"),
    ]:
        cfg = load_config(None, [*base, "model.name=dtw", override])
        with pytest.raises(ConfigError, match=message):
            create_task(cfg, data)
