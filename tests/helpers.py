"""Helpers shared by the test modules (imported as ``helpers``: ``tests/`` is on the path)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse.config import load_config
from alignfuse.engine import Trainer, load_data
from alignfuse.engine.evaluate import images_to_tensor


def quiet_trainer(folder: Path, overrides: list[str], name: str) -> Trainer:
    """A Trainer of the default config with ``overrides`` and ``name=``, in
    ``folder / name``, without progress bars or log lines."""
    cfg = load_config(None, [*overrides, f"name={name}"])
    return Trainer(cfg, load_data(cfg), folder / name, progress=False, log=lambda m: None)


def assert_resumes_exactly(
    full: Trainer, make_part: Callable[[], Trainer], stop_after: int = 7
) -> Trainer:
    """Train a fresh ``make_part()`` for ``stop_after`` steps (as if killed after a
    checkpoint), rebuild it, resume, and assert its weights equal those of ``full`` (trained
    in one go); the resumed trainer is returned."""
    make_part().fit(stop_after=stop_after)
    part = make_part()
    part.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, part.model.state_dict()[k]), k
    return part


def two_stage_winoground_loop(
    model: Any, wino: Any, first_stage: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> np.ndarray:
    """Winoground scores ``(groups, 2, 2)`` of a two-stage model, one pair at a time: its
    ``match_scores`` on the pair plus ``first_stage(image embedding, caption embedding)``."""
    scores = np.zeros((len(wino), 2, 2))
    with torch.no_grad():
        for g in range(len(wino)):
            img, feats = model.image_features(images_to_tensor(wino.images[g]))
            txt, tokens, mask = model.text_features(model.prepare_text(list(wino.captions[g])))
            for c in range(2):
                for i in range(2):
                    m = model.match_scores(feats[i : i + 1], tokens[c : c + 1], mask[c : c + 1])
                    scores[g, c, i] = float(m) + float(first_stage(img[i], txt[c]))
    return scores
