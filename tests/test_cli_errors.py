"""A user's mistakes through the real ``alignfuse`` entry point, in a subprocess: each exits 2
with one line naming the key or flag and what was expected, never a traceback. The README's
table of messages lists every case here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "clip.yaml")

# (arguments, a fragment of the one-line message); {dir} is a folder of small files
CASES = [
    (["train", EXAMPLE, "train.epochs=["], "the value is not valid YAML"),
    (["train", EXAMPLE, "model.embd_dim=3"], "did you mean 'model.embed_dim'"),
    (["train", EXAMPLE, "model.embed_dim=0"], "model 'dual_encoder': embed_dim must be >= 1"),
    (["train", EXAMPLE, "train.lr=-1"], "train.lr must be"),
    (["train", EXAMPLE, "eval.batch_size=0"], "eval.batch_size must be an integer >= 1"),
    (["train", "{dir}/bad.yaml"], "is not valid YAML"),
    (["bench", "--suite", "{dir}/bad.yaml"], "is not valid YAML"),
    (["bench", "--suite", "defualt"], "did you mean 'default'"),
    (["align", "{dir}/s.npy", "{dir}/y.npy"], "X must hold real numbers"),
    (["align", "{dir}/x.npy", "{dir}/y.npy", "--dim", "9"], "--dim 9 exceeds the views' columns"),
    (["align", "{dir}/x.npy", "{dir}/y.npy", "--dim", "0"], "--dim must be >= 1"),
    (["align", "{dir}/x.npy", "{dir}/y.npy", "--reg", "-1"], "--reg must be >= 0"),
    (["align", "{dir}/p.npz"], "cannot be read without unpickling"),
    (["eval", "{dir}"], "is not a run folder"),
    (["list", "lossez"], "did you mean 'losses'"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.normal(size=(50, 5)))
    np.save(d / "y.npy", rng.normal(size=(50, 4)))
    np.save(d / "s.npy", np.array(["a"] * 50))
    np.savez(d / "p.npz", X=np.array([{"a": 1}] * 50, dtype=object), Y=rng.normal(size=(50, 4)))
    (d / "bad.yaml").write_text("name: [unclosed\n")
    return d


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALIGNFUSE_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "alignfuse.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_mistakes_give_one_named_line(files: Path, args: list[str], message: str) -> None:
    res = _run([a.replace("{dir}", str(files)) for a in args], files)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in lines if line.startswith("alignfuse: error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr


def test_the_readme_lists_every_case() -> None:
    readme = (ROOT / "README.md").read_text()
    for _, message in CASES:
        assert message in readme, f"README's table of messages lacks {message!r}"
