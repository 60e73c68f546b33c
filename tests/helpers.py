"""Helpers shared by the test modules (imported as ``helpers``: ``tests/`` is on the path)."""

from pathlib import Path

from alignfuse.config import load_config
from alignfuse.engine import Trainer, load_data


def quiet_trainer(folder: Path, overrides: list[str], name: str) -> Trainer:
    """A Trainer of the default config with ``overrides`` and ``name=``, in
    ``folder / name``, without progress bars or log lines."""
    cfg = load_config(None, [*overrides, f"name={name}"])
    return Trainer(cfg, load_data(cfg), folder / name, progress=False, log=lambda m: None)
