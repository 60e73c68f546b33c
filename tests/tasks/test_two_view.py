"""The ``two_view`` task (suite ``correlation``): an estimator fit in closed form, run by the
suite runner without the training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignfuse.bench import load_suite, run_suite
from alignfuse.config import load_config
from alignfuse.correlation import CCA
from alignfuse.correlation.evaluate import evaluate_two_view
from alignfuse.correlation.io import load_estimator
from alignfuse.data.twoview import load_digits_twoview
from alignfuse.errors import ConfigError
from alignfuse.tasks import EstimatorTask, create_task, looped

BASE = ["task.name=two_view", "task.args.components=4", "data.name=digits_twoview"]
SMALL = "data.args={pairs_per_image: 1}"


@pytest.fixture(scope="module")
def digits():
    return load_digits_twoview(pairs_per_image=1)


def test_runner_fits_the_estimator_and_reports_the_protocol(tmp_path, digits):
    suite = tmp_path / "corr.yaml"
    suite.write_text(
        "name: corr\nbase:\n  task: {name: two_view, args: {components: 4}}\n"
        "  data: {name: digits_twoview, args: {pairs_per_image: 1}}\n"
        "experiments:\n  - {name: cca, model: {name: cca, args: {reg_x: 1.0e-3, reg_y: 1.0e-3}}}\n"
        "  - {name: pls, model: {name: pls}}\n"
    )
    out = tmp_path / "out"
    rows = run_suite(load_suite(str(suite), ["task.args.components=3"]), out, log=lambda m: None)
    assert [r["name"] for r in rows] == ["cca", "pls"]
    # the same numbers as the estimator fit and scored by hand
    ref = CCA(n_components=3, reg_x=1e-3, reg_y=1e-3).fit(digits["train"].x, digits["train"].y)
    assert rows[0]["metrics"] == pytest.approx(evaluate_two_view(ref, digits, 3), rel=1e-9)
    assert rows[0]["steps"] == 0 and rows[0]["train_seconds"] >= 0
    # the fitted estimator is saved in the experiment's folder and reads back
    back = load_estimator(out / "experiments" / "cca" / "estimator")
    x = digits["test"].x[:20]
    np.testing.assert_allclose(
        np.asarray(back.transform(x, digits["test"].y[:20])[0]),
        np.asarray(ref.transform(x, digits["test"].y[:20])[0]),
        rtol=1e-6,
        atol=1e-9,
    )
    report = (out / "report.md").read_text()
    assert "## Leaderboard (test split)" in report and "| cca | " in report
    assert (out / "correlations.png").stat().st_size > 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["config"]["model"]["name"] == "pls"
    # a second run reuses both rows
    again = run_suite(load_suite(str(suite), ["task.args.components=3"]), out, log=lambda m: None)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.args.component=3", "unknown config key 'task.args.component'"),
        ("task.args.components=0", "task.args.components must be a positive integer"),
        ("model.name=ccaa", "unknown method 'ccaa'; did you mean 'cca'"),
        ("model.args={regx: 1}", "method 'cca'"),
    ],
)
def test_bad_settings_are_named(digits, override, message):
    cfg = load_config(None, [*BASE, SMALL, "model.name=cca", override])
    with pytest.raises(ConfigError, match=message):
        create_task(cfg, digits)


def test_it_is_an_estimator_task_the_loop_refuses(digits):
    task = create_task(load_config(None, [*BASE, SMALL, "model.name=cca"]), digits)
    assert isinstance(task, EstimatorTask)
    with pytest.raises(ConfigError, match="not trained by the loop"):
        looped(task)


def test_wrong_data_is_named():
    cfg = load_config(None, [*BASE, "model.name=cca"])
    with pytest.raises(ConfigError, match="needs two-view data"):
        create_task(cfg, data={"not": "two views"})


def test_train_and_eval_commands_on_an_estimator_task(tmp_path, capsys):
    from alignfuse.cli import main

    cfg = tmp_path / "est.yaml"
    cfg.write_text(
        "name: est\ntask: {name: two_view, args: {components: 3}}\n"
        "data: {name: digits_twoview, args: {pairs_per_image: 1}}\nmodel: {name: cca}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert '"corr_sum"' in capsys.readouterr().out
    assert (run / "estimator" / "model.json").is_file() and (run / "metrics.json").is_file()
    assert main(["eval", str(run)]) == 2  # nothing to load into the loop: one line, no traceback
    err = capsys.readouterr().err
    assert "is fitted, not trained by the loop" in err and "Traceback" not in err
    assert main(["train", str(cfg), "task.args.compnents=3", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'task.args.components'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_checks_task_arguments_before_loading_data(tmp_path, capsys, monkeypatch):
    """A vqa config's typo is named before its frozen towers would be trained."""
    from alignfuse.cli import main

    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "vqa.yaml"
    cfg.write_text("name: v\ntask: {name: vqa, args: {widht: 8}}\nmodel: {name: early}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "v")]) == 2
    assert "did you mean 'task.args.width'" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "pretrained").exists()
