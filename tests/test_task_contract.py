"""Every registered task, run end to end through the suite runner on tiny settings (its
data loaded, its model built and trained by the loop or fitted, evaluated, its leaderboard
and report sections written through the one report writer): a registration without a case
here fails, so a task is tested the day it is registered.

The contract: a row with status ``ok`` and finite metrics; ``steps`` > 0 exactly when the
loop trains the task; ``leaderboard.md`` and ``report.md`` name the experiment."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

import alignfuse
from alignfuse.bench import run_suite
from alignfuse.bench.suite import Suite, SuiteExperiment
from alignfuse.config import load_config
from alignfuse.data.espeak import espeak_available
from alignfuse.tasks import task_type
from alignfuse.tasks.base import Task
from conftest import TINY_OVERRIDES

LOOP = ["schedule: constant", "warmup_fraction: 0.0", "eval_every: 0", "checkpoint_every: 0"]
TINY_SHAPES = (
    "{name: shapes, args: {n_train: 48, n_val: 16, n_test: 24, n_winoground: 2, use_cache: false}}"
)
PRETRAIN = (
    "pretrain: {model: {embed_dim: 8, args: {image_args: {width: 4, out_dim: 8}, "
    "text_args: {word_dim: 4, hidden: 4}}}, train: {epochs: 1, batch_size: 16}}"
)


def _train(**kw: object) -> str:
    return "train={" + ", ".join([*(f"{k}: {v}" for k, v in kw.items()), *LOOP]) + "}"


def _espeak() -> None:
    if not espeak_available():
        pytest.skip("libespeak-ng is not installed")


def _spider(tmp: Path) -> list[str]:
    from helpers import write_spider_folder

    (tmp / "spider").mkdir()
    root = write_spider_folder(tmp / "spider")
    return [
        "task={name: schema_linking, args: {val_fraction: 0.5, ks: [1, 3]}}",
        f"data={{name: spider_linking, args: {{root: {root}}}}}",
        "model.name=string_match",
    ]


def _speech(tmp: Path) -> list[str]:
    _espeak()
    return [
        "task={name: speech_text, args: {test_sentences: 4}}",
        "data={name: spoken, args: {n_sentences: 12, renderings: 2, use_cache: false}}",
        "model={name: speech_text, embed_dim: 8, args: {text_args: {word_dim: 4, hidden: 4}, "
        "audio_args: {width: 4}}}",
        _train(epochs=1, batch_size=4),
    ]


def _words(tmp: Path) -> list[str]:
    _espeak()
    return [
        "task.name=word_boundaries",
        "data={name: spoken, args: {n_sentences: 2, renderings: 2, use_cache: false}}",
        "model={name: dtw, args: {features: mfcc}}",
    ]


# name -> (the experiment's overrides, given a scratch folder; whether it is a loop task)
CASES: dict[str, tuple[Callable[[Path], list[str]], bool]] = {
    "image_text": (lambda _: list(TINY_OVERRIDES), True),
    "speech_text": (_speech, True),
    "schema_linking": (_spider, True),
    "two_view": (
        lambda _: [
            "task={name: two_view, args: {components: 3}}",
            "data={name: digits_twoview, args: {pairs_per_image: 1}}",
            "model={name: cca, args: {reg_x: 0.001, reg_y: 0.001}}",
        ],
        False,
    ),
    "mvae": (
        lambda _: [
            "task={name: mvae, args: {samples: 3}}",
            "data={name: digits_twoview, args: {pairs_per_image: 1}}",
            "model={name: mvae, args: {latent: 2, hidden: [8]}}",
            _train(epochs=1, batch_size=256, optimizer="adam", weight_decay=0.0),
        ],
        True,
    ),
    "word_boundaries": (_words, False),
    "clip_clause": (
        lambda _: [
            "task={name: clip_clause, args: {embedder: {epochs: 1}}}",
            "data={name: clips, args: {n_train: 8, n_val: 1, n_test: 3, use_cache: false}}",
            "model.name=dtw",
        ],
        False,
    ),
    "vqa": (
        lambda _: [
            f"task={{name: vqa, args: {{width: 8, {PRETRAIN}}}}}",
            f"data={TINY_SHAPES}",
            "model.name=early",
            _train(epochs=1, batch_size=64),
        ],
        True,
    ),
    "matching": (
        lambda _: [
            f"task={{name: matching, args: {{width: 8, {PRETRAIN}}}}}",
            f"data={TINY_SHAPES}",
            "model.name=low_rank",
            _train(epochs=1, batch_size=64),
        ],
        True,
    ),
    "rerank": (
        lambda _: [
            f"task={{name: rerank, args: {{k: 3, {PRETRAIN}}}}}",
            f"data={TINY_SHAPES}",
            "model.name=filip",
        ],
        False,
    ),
}


def test_every_registered_task_has_a_case():
    assert set(alignfuse.list_tasks()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_task_contract(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    overrides, looped = CASES[name]
    cfg = load_config(None, [*overrides(tmp_path), f"name={name}_tiny"])
    assert cfg.task.name == name
    kind = task_type(cfg)
    suite = Suite(f"contract_{name}", "one experiment", [SuiteExperiment(cfg)])
    (row,) = run_suite(suite, tmp_path / "out", progress=False, log=lambda m: None)
    assert row["status"] == "ok" and row["metrics"], row
    assert all(math.isfinite(v) for v in row["metrics"].values()), row["metrics"]
    task = kind(cfg, kind.load_data(cfg), tmp_path / "again")
    assert isinstance(task, Task) == looped
    trains = looped and any(p.requires_grad for p in task.build()[0].parameters())
    assert (row["steps"] > 0) == trains  # a lexical linker is a loop task with nothing to train
    for f in ("leaderboard.md", "report.md", "results.jsonl"):
        assert (tmp_path / "out" / f).is_file(), f
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith(f"# alignfuse bench: suite `contract_{name}`")
    assert "## Leaderboard" in report and "## Notes" in report
    assert json.loads((tmp_path / "out" / "results.jsonl").read_text())["name"] == cfg.name
