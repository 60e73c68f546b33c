"""The ``mvae`` task (suite ``mvae``) end to end on a small config: rows, report, plots,
resume, bad keys; and its training equal to the library's ``train_mvae``."""

from __future__ import annotations

import json

import pytest
import torch

from alignfuse.bench import load_suite, run_suite
from alignfuse.cli import main
from alignfuse.errors import ConfigError
from alignfuse.models.mvae import MVAE, train_mvae
from alignfuse.tasks import create_task, task_type
from alignfuse.tasks.mvae import LIKELIHOODS, evaluate_mvae

SMALL = """\
name: mvae_small
base:
  task: {name: mvae, args: {anneal_epochs: 2, samples: 5}}
  data: {name: digits_twoview, args: {pairs_per_image: 1}}
  model: {name: mvae, args: {latent: 4, hidden: [32], weights: {label: 5.0}}}
  train: {epochs: 3, batch_size: 128, lr: 1.0e-3, weight_decay: 0.0, optimizer: adam,
          schedule: constant, warmup_fraction: 0.0, grad_clip: 0.0, eval_every: 0,
          checkpoint_every: 0}
experiments:
  - {name: all, model: {args: {subsets: all}}}
  - {name: joint, model: {args: {subsets: joint}}, train: {epochs: 2}}
  - {name: moe, model: {args: {aggregation: moe, subsets: joint}}, train: {epochs: 1}}
"""


@pytest.fixture(scope="module")
def data():
    cfg = load_suite_text(SMALL).experiments[0].config
    return task_type(cfg).load_data(cfg)


def load_suite_text(text, overrides=()):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "mvae_small.yaml"
    path.write_text(text)
    return load_suite(str(path), list(overrides))


def test_mvae_suite(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    board = capsys.readouterr().out
    assert "| all |" in board and "| pixel probe |" in board
    rows = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["all", "joint", "moe"]
    assert [len(r["history"]["epochs"]) for r in rows] == [3, 2, 1]
    assert rows[1]["config"]["model"]["args"]["subsets"] == "joint"
    for r in rows:
        m = r["metrics"]
        assert all(0 <= m[k] <= 1 for k in m if "_from_" in k and "nll" not in k)
        assert m["nll_label_from_rotated"] > 0 and m["nll_joint"] > 0
    report = (out / "report.md").read_text()
    assert "![generated](generated.png)" in report and "![cross-modal](cross_modal.png)" in report
    assert (out / "generated.png").stat().st_size > 5000
    assert (out / "cross_modal.png").stat().st_size > 3000
    assert "CPU cores" in report.split("Machine: ")[1].splitlines()[0]
    # a re-run reuses the finished rows
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    again = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
    # an experiment trained further resumes from its last checkpoint
    more = load_suite_text(SMALL, ["train.epochs=4"])
    more.experiments = more.experiments[:1]
    (row,) = run_suite(more, out, log=lambda m: None)
    assert len(row["history"]["epochs"]) == 4
    assert row["history"]["epochs"][:3] == rows[0]["history"]["epochs"]


def test_the_task_trains_as_train_mvae_does(tmp_path, data):
    """The loop's MVAE task against the library function (which runs the same loop through
    fit_module): the same seed and settings give the same losses and metrics."""
    suite = load_suite_text(SMALL, ["train.epochs=2"])
    suite.experiments = suite.experiments[:1]
    (row,) = run_suite(suite, tmp_path / "out", log=lambda m: None)
    torch.manual_seed(0)
    model = MVAE(
        data.dims, LIKELIHOODS, latent=4, hidden=(32,), weights={"label": 5.0}, subsets="all"
    )
    history = train_mvae(
        model,
        data.train,
        epochs=2,
        batch_size=128,
        lr=1e-3,
        anneal_epochs=2,
        seed=0,
        progress=False,
    )
    assert row["history"]["epochs"] == pytest.approx(history, rel=1e-6)
    ref = evaluate_mvae(model, data.test, data.probes, samples=5, seed=0)
    assert {k: row["metrics"][k] for k in ref} == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.args.latentt=4", "model 'mvae' has no argument 'latentt'; did you mean 'latent'"),
        ("task.args.sample=5", "unknown config key 'task.args.sample'"),
        ("task.args.anneal_epochs=-1", "anneal_epochs must be >= 0"),
        ("model.name=dual_encoder", "task 'mvae' trains model 'mvae'"),
        ("model.args.subsets=some", "model 'mvae': subsets must be"),
    ],
)
def test_bad_settings_are_named(data, override, message):
    cfg = load_suite_text(SMALL, [override]).experiments[0].config
    with pytest.raises(ConfigError, match=message):
        task = create_task(cfg, data)
        task.build()


def test_an_empty_suite_is_refused(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SMALL.split("experiments:")[0] + "experiments: []\n")
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    assert "lists no experiments" in capsys.readouterr().err
