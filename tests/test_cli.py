import json

import pytest

from alignfuse.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "losses:" in out and "info_nce" in out and "Symmetric InfoNCE" in out
    assert main(["list", "datasets"]) == 0
    assert "shapes" in capsys.readouterr().out
    assert main(["list", "lossses"]) == 2
    assert "did you mean 'losses'" in capsys.readouterr().err


def test_train_eval_and_errors(tmp_path, capsys, tiny_overrides):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: cli\nloss: {name: triplet, args: {mining: hardest}}\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), *tiny_overrides, "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["test/t2i_r10"] <= 1
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    # a second train into the same folder needs --resume
    assert main(["train", str(cfg), *tiny_overrides, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    assert main(["eval", str(out), "--splits", "nope"]) == 2
    assert "eval.splits names ['nope'], which the data does not have" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert main(["train", str(cfg), "model.embd_dim=3"]) == 2
    assert "did you mean 'model.embed_dim'" in capsys.readouterr().err


def test_data_export(tmp_path, capsys):
    args = ["data", "shapes", "--out", str(tmp_path / "d"), "--n-train", "8", "--n-val", "4"]
    assert main([*args, "--n-test", "6", "--n-winoground", "2"]) == 0
    assert "best t2i R@1" in capsys.readouterr().out
    assert (tmp_path / "d" / "dataset_shapes.json").is_file()
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 8 + 4 + 6 + 4


def test_data_export_as_webdataset_shards_loads_back(tmp_path, capsys):
    from alignfuse.data import load_webdataset

    out = tmp_path / "w"
    args = ["data", "shapes", "--out", str(out), "--format", "webdataset", "--shard-size", "5"]
    assert (
        main([*args, "--n-train", "8", "--n-val", "4", "--n-test", "6", "--n-winoground", "2"]) == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("train-*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    back = load_webdataset({"train": str(out / "train-{000000..000001}.tar")})
    assert len(back["train"]) == 8


def test_bench_smoke_suite_writes_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["bench", "--suite", "smoke", "--out", str(out), "--no-progress"]) == 0
    board = capsys.readouterr().out
    assert "clip_tiny" in board and "vsepp_tiny" in board
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["clip_tiny", "vsepp_tiny"]
    assert all(len(r["config_hash"]) == 12 and r["status"] == "ok" for r in rows)
    report = (out / "report.md").read_text()
    assert "best reachable" in report and "text-to-image R@1" in report
    for png in ("curves.png", "recall.png", "retrievals_clip_tiny.png"):
        assert (out / png).stat().st_size > 5000
    # running again reuses finished experiments
    assert main(["bench", "--suite", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert "already done" in capsys.readouterr().err


def test_bench_unknown_suite_and_override(capsys):
    assert main(["bench", "--suite", "smok"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err
    assert main(["bench", "--suite", "smoke", "train.epoch=1"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_entry_point():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "alignfuse.cli", "list", "losses"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "triplet" in res.stdout


@pytest.mark.parametrize("suite", ["fusion", "mvae", "temporal", "correlation"])
def test_every_suite_checks_its_dotted_overrides_before_running(tmp_path, capsys, suite):
    from alignfuse.cli import main

    out = tmp_path / "o"
    assert main(["bench", "--suite", suite, "--out", str(out), "train.epochz=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epochz'; did you mean 'train.epochs'?" in err
    assert main(["bench", "--suite", suite, "--out", str(out), "train.epochs=["]) == 2
    assert "the value is not valid YAML" in capsys.readouterr().err
    # task arguments are checked before any data is loaded (the fusion suite's frozen towers)
    assert main(["bench", "--suite", suite, "--out", str(out), "task.args.nope=1"]) == 2
    assert "unknown config key 'task.args.nope'" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()


def test_overwrite_replaces_a_previous_run_and_nothing_else(tmp_path, tiny_overrides, capsys):
    from alignfuse.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: over\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), *tiny_overrides, "train.epochs=1", "--out", str(out)]) == 0
    capsys.readouterr()
    other = [*tiny_overrides, "train.epochs=1", "model.embed_dim=8"]
    assert main(["train", str(cfg), *other, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", str(cfg), *other, "--out", str(out), "--overwrite"]) == 0
    assert "removed the previous run" in capsys.readouterr().err
    assert main(["train", str(cfg), *other, "--out", str(out), "--overwrite", "--resume"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # a run in use by another process is never removed
    from alignfuse.engine.fit import run_lock

    handle = run_lock(out)
    try:
        assert main(["train", str(cfg), *other, "--out", str(out), "--overwrite"]) == 2
        assert "in use by process" in capsys.readouterr().err and out.is_dir()
    finally:
        handle.close()


def test_list_shows_the_correlation_methods(capsys):
    from alignfuse.cli import main

    assert main(["list", "correlation"]) == 0
    out = capsys.readouterr().out
    for name in ("cca", "kcca", "scm", "pls", "procrustes", "dcca", "dccae"):
        assert f"  {name} " in out
    assert main(["list"]) == 0
    assert "correlation (alignfuse align" in capsys.readouterr().out
