"""The README's examples run as written: its Python block end to end, its YAML config through
the config loader (with the README's own override syntax)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    blocks = _blocks("python")
    assert blocks, "README has no python block"
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))  # the shapes data is built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, str(README), "exec"), namespace)
    # the CCA example prints its five canonical correlations
    printed = capsys.readouterr().out
    assert len(re.findall(r"\d\.\d+", printed)) >= 5
    assert tuple(namespace["scores"].shape) == (10, 50)  # type: ignore[attr-defined]
    assert tuple(namespace["z"].shape) == (4, 64)  # type: ignore[attr-defined]


def test_readme_yaml_config_loads(tmp_path):
    from alignfuse.config import load_config

    (block,) = _blocks("yaml")
    path = tmp_path / "my.yaml"
    path.write_text(block)
    cfg = load_config(path, ["model.embed_dim=128", "train.epochs=3"])
    assert cfg.name == "my_clip"
    assert cfg.model.embed_dim == 128 and cfg.train.epochs == 3
    assert cfg.loss.name == "info_nce" and cfg.data.name == "captions"
    with pytest.raises(ValueError, match="embed_dim"):
        load_config(path, ["model.embed_dimm=1"])  # an unknown key names the closest one


def test_readme_task_example_trains_through_the_runner(tmp_path):
    from alignfuse.bench import load_suite, run_suite
    from alignfuse.registry import TASKS

    (code,) = _blocks("python task")
    (suite_text,) = _blocks("yaml suite")
    suite = tmp_path / "toy.yaml"
    suite.write_text(suite_text)
    try:
        exec(compile(code, str(README), "exec"), {})
        assert "toy_regression" in TASKS.names()
        (row,) = run_suite(
            load_suite(str(suite), ["train.epochs=5"]), tmp_path / "out", log=lambda m: None
        )
    finally:
        TASKS._entries.pop("toy_regression", None)
    assert row["status"] == "ok" and row["config"]["train"]["epochs"] == 5
    assert row["steps"] == 5 * (256 // 32) and len(row["history"]["epochs"]) == 5
    # the loss fell: the linear map is learnable exactly
    assert row["history"]["epochs"][-1] < 0.5 * row["history"]["epochs"][0]
    assert 0 <= row["metrics"]["mse"] < row["history"]["epochs"][0]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "# alignfuse bench: suite `toy`" in report
    assert "| experiment | mse | train s |" in report and "| linear |" in report


def test_readme_command_lines_use_shipped_configs():
    from alignfuse.config import load_config

    root = README.parent
    text = README.read_text()
    used = set(re.findall(r"\.venv/bin/\S*.*?alignfuse(?:\.cli)? train (\S+\.yaml)", text))
    assert used, "README has no train line"
    for path in used:
        assert (root / path).is_file(), f"README trains {path}, which the repository lacks"
        cfg = load_config(root / path, ["model.embed_dim=128"])
        assert cfg.model.embed_dim == 128
