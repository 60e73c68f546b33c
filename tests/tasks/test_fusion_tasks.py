"""The fusion suite's tasks (``vqa``, ``matching``, ``rerank``) end to end on tiny data: one
frozen dual encoder trained once and shared, every row, report and plot."""

from __future__ import annotations

import numpy as np
import pytest

from alignfuse.bench import load_suite, run_suite
from alignfuse.config import load_config
from alignfuse.errors import ConfigError
from alignfuse.tasks import create_task, task_type
from alignfuse.tasks.matching import perturb

SUITE = """
name: tiny_fusion
x-data: &data {name: shapes, args: {n_train: 96, n_val: 32, n_test: 48, n_winoground: 4}}
x-pretrain: &pretrain
  model: {embed_dim: 16, args: {image_args: {width: 8, out_dim: 16}, text_args: {word_dim: 8, hidden: 8}}}
  train: {epochs: 1, batch_size: 32}
x-vqa: &vqa
  task: {name: vqa, args: {width: 16, pretrain: *pretrain}}
  data: *data
  train: {epochs: 1, batch_size: 64, schedule: constant, warmup_fraction: 0.0, eval_every: 0,
          checkpoint_every: 0}
x-matching: &matching
  task: {name: matching, args: {width: 16, pretrain: *pretrain}}
  data: *data
  train: {epochs: 1, batch_size: 64, schedule: constant, warmup_fraction: 0.0, eval_every: 0,
          checkpoint_every: 0}
x-rerank: &rerank
  task: {name: rerank, args: {k: 4, pretrain: *pretrain}}
  data: *data
  train: {epochs: 1, batch_size: 16}
experiments:
  - {<<: *vqa, name: vqa_early, model: {name: early}}
  - {<<: *vqa, name: vqa_late, model: {name: late}}
  - {<<: *vqa, name: vqa_san, model: {name: san, args: {query: question, width: 16}}}
  - {<<: *matching, name: matching_early, model: {name: early}}
  - {<<: *matching, name: matching_single_stream, model: {name: single_stream, args: {width: 16, heads: 2, layers: 1}}}
  - {<<: *rerank, name: rerank_first_stage, model: {name: none}}
  - {<<: *rerank, name: rerank_scan, model: {name: scan}}
  - {<<: *rerank, name: rerank_imram, model: {name: imram, args: {steps: 2}}}
"""


@pytest.fixture()
def suite_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    return path


@pytest.mark.slow
def test_fusion_tasks_run_end_to_end(tmp_path, suite_file):
    logs: list[str] = []
    rows = run_suite(load_suite(str(suite_file)), tmp_path / "out", log=logs.append)
    out = tmp_path / "out"
    for name in (
        "results.jsonl",
        "leaderboard.md",
        "report.md",
        "vqa.png",
        "san_attention_vqa_san.png",
        "scan_attention.png",
    ):
        assert (out / name).is_file(), name
    by = {r["name"]: r for r in rows}
    for n in ("vqa_early", "vqa_late", "vqa_san"):
        m = by[n]["metrics"]
        assert (
            0.0 <= m["acc"] <= 1.0
            and m["fusion_params"] > 0
            and len(by[n]["history"]["epochs"]) == 1
        )
    assert all(
        0.0 <= by[n]["metrics"]["hard_negative_acc"] <= 1.0
        for n in ("matching_early", "matching_single_stream")
    )
    assert "t2i_r1" in by["rerank_first_stage"]["metrics"]
    assert by["rerank_imram"]["train_seconds"] > 0  # trained as a matcher before re-ranking
    # the frozen towers were trained once: one pretraining run in the cache
    runs = list((tmp_path / "cache" / "pretrained").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
    report = (out / "report.md").read_text()
    for task in ("vqa", "matching", "rerank"):
        assert f"## {task}: leaderboard" in report
    assert "| + scan re-rank (top 4) |" in report and "## Frozen towers" in report


@pytest.mark.slow
def test_a_resumed_vqa_row_equals_an_uninterrupted_one(tmp_path, suite_file):
    """Two epochs in one go, and one epoch then a second from its checkpoint: the same."""
    one = load_suite(str(suite_file), ["train.epochs=2"])
    one.experiments = one.experiments[:1]
    (full,) = run_suite(one, tmp_path / "a", log=lambda m: None)
    part = load_suite(str(suite_file), ["train.epochs=1"])
    part.experiments = part.experiments[:1]
    run_suite(part, tmp_path / "b", log=lambda m: None)
    (resumed,) = run_suite(one, tmp_path / "b", log=lambda m: None)
    assert resumed["metrics"]["acc"] == full["metrics"]["acc"]
    assert resumed["history"]["epochs"] == full["history"]["epochs"]


def test_unknown_fusions_and_scorers_are_named(suite_file):
    suite = load_suite(str(suite_file))
    cfg = suite.experiments[0].config
    for override, message in [
        ("model.name=earli", "unknown fusion 'earli'; did you mean 'early'"),
        ("task.args.widht=3", "unknown config key 'task.args.widht'"),
        ("task.args.width=0", "task.args.width must be a positive integer"),
    ]:
        base = [f"task.name={cfg.task.name}", "data.name=shapes", "model.name=early"]
        bad = load_config(None, [*base, override])
        with pytest.raises(ConfigError, match=message):
            create_task(bad, data=_FakeVqa())


class _FakeVqa:
    """Stands in for the loaded data: the settings are checked before the data."""


def test_pretrain_settings_are_checked():
    cfg = load_config(None, ["task.name=vqa", "task.args.pretrain={train: {epoch: 2}}"])
    with pytest.raises(ConfigError, match="task.args.pretrain.train.epoch"):
        task_type(cfg).load_data(cfg)


def test_perturb_makes_word_level_hard_negatives():
    rng = np.random.default_rng(0)
    assert (
        perturb("a red circle left of a blue square", rng) == "a blue circle left of a red square"
    )
    assert perturb("a red circle left of a red square", rng) == "a red square left of a red circle"
    one = perturb("a red circle", rng)
    assert one != "a red circle" and one.endswith(" circle")


@pytest.mark.slow
def test_vqa_and_matching_metrics_equal_a_loop_over_questions_and_images(suite_file):
    """The tasks' test figures recomputed one question (one image) at a time."""
    import torch

    suite = load_suite(str(suite_file))
    by = {e.config.name: e.config for e in suite.experiments}
    cfg = by["vqa_early"]
    task = create_task(cfg)
    torch.manual_seed(0)
    model, _ = task.build()
    metrics, _ = task.evaluate(model)
    test, hits, kinds = task.data.test, [], task.data.test["kinds"]
    with torch.no_grad():
        for q in range(len(test["labels"])):
            img = test["images"][test["owner"][q : q + 1]]
            logits = model(img, test["ids"][q : q + 1], test["lengths"][q : q + 1])
            hits.append(int(logits.argmax()) == int(test["labels"][q]))
    assert metrics["acc"] == pytest.approx(sum(hits) / len(hits))
    for kind in ("color", "count", "exists"):
        mine = [h for h, k in zip(hits, kinds, strict=True) if k == kind]
        assert metrics[f"acc_{kind}"] == pytest.approx(sum(mine) / len(mine))
    common = np.bincount(task.data.train["labels"]).argmax()
    assert metrics["majority"] == pytest.approx(float((test["labels"] == common).float().mean()))

    mtask = create_task(by["matching_early"])
    torch.manual_seed(0)
    mmodel, _ = mtask.build()
    m, _ = mtask.evaluate(mmodel)
    t, above_hard, above_other = mtask.data.test, 0, 0
    with torch.no_grad():
        for i in range(len(t["images"])):
            s = {
                k: float(
                    mmodel(
                        t["images"][i : i + 1], t[k]["ids"][i : i + 1], t[k]["lengths"][i : i + 1]
                    )[0]
                )
                for k in ("pos", "hard", "other")
            }
            above_hard += s["pos"] > s["hard"]
            above_other += s["pos"] > s["other"]
    assert m["hard_negative_acc"] == pytest.approx(above_hard / len(t["images"]))
    assert m["random_negative_acc"] == pytest.approx(above_other / len(t["images"]))
