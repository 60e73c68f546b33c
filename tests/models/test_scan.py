"""SCAN as a trainable model: its scores are the SCAN scorer's on its tokens, the trainer
trains it on its own score matrix, and evaluation scores every pair."""

import numpy as np
import pytest
import torch

from alignfuse.engine.evaluate import evaluate_split, evaluate_winoground, pair_scores
from alignfuse.errors import ConfigError
from alignfuse.interaction.scan import SCAN
from helpers import assert_resumes_exactly, quiet_trainer

SCAN_OVERRIDES = [
    "model.name=scan",
    "loss.name=triplet",
    "loss.args={mining: hardest, margin: 0.2, sum_warmup: 6}",
]


def _trainer(tmp_path, tiny, extra=(), name="scan"):
    return quiet_trainer(tmp_path, [*tiny, *SCAN_OVERRIDES, *extra], name)


def test_scores_are_the_scan_scorer_on_the_projected_tokens(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    model = tr.model.eval()
    split = tr.data["val"]
    texts = [c[0] for c in split.captions[:7]]
    from alignfuse.engine.evaluate import images_to_tensor

    with torch.no_grad():
        images = images_to_tensor(split.images[:5])
        regions = model.image_tokens(images)
        words, mask = model.text_tokens(model.prepare_text(texts))
        want = SCAN()(regions, words, None, mask)
        assert torch.allclose(model.score(regions, words, mask), want)
        assert torch.allclose(model(images, model.prepare_text(texts[:5])), want[:, :5], atol=1e-6)
    # batching the captions (different padded widths) does not change a score
    one = pair_scores(model, split.images[:5], texts, batch_size=256)
    small = pair_scores(model, split.images[:5], texts, batch_size=2)
    assert torch.allclose(one, want, atol=1e-6) and torch.allclose(small, one, atol=1e-6)


def test_trainer_trains_scan_on_its_score_matrix_and_resumes(tmp_path, tiny_overrides):
    full = _trainer(tmp_path, tiny_overrides, name="full")
    hist = full.fit()
    losses = [r["loss"] for r in hist.train]
    assert losses[-1] < losses[0] and hist.val
    part = assert_resumes_exactly(full, lambda: _trainer(tmp_path, tiny_overrides, name="part"))
    assert int(part.loss_fn.num_calls) == int(full.loss_fn.num_calls)  # the warm-up counter
    res = evaluate_split(full.model, full.data["test"])
    sims = res.pop("_sims")
    assert sims.shape == (len(full.data["test"]), sum(len(c) for c in full.data["test"].captions))
    assert {"rsum", "i2t_map", "t2i_map", "hard_negative_acc"} <= res.keys()
    assert "modality_gap" not in res  # no per-item embedding to measure it on


def test_winoground_scores_of_a_pairwise_model_equal_a_loop_over_groups(tmp_path, tiny_overrides):
    from alignfuse.metrics import winoground_scores

    tr = _trainer(tmp_path, tiny_overrides)
    model, wino = tr.model.eval(), tr.data.winoground
    scores = np.zeros((len(wino), 2, 2))
    for g in range(len(wino)):
        s = pair_scores(model, wino.images[g], list(wino.captions[g]))  # (image, caption)
        scores[g] = s.T.numpy()  # (caption, image)
    assert evaluate_winoground(model, tr.data) == pytest.approx(winoground_scores(scores))


def test_scan_model_rejects_what_it_cannot_train(tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match="from_similarity"):
        _trainer(tmp_path, tiny_overrides, ["loss.name=sigmoid", "loss.args={}"])
    with pytest.raises(ConfigError, match="GradCache"):
        _trainer(tmp_path, tiny_overrides, ["train.grad_cache_chunk=4"])
    with pytest.raises(ValueError, match="word features"):
        _trainer(tmp_path, tiny_overrides, ["model.text_encoder=minilm"])


def test_losses_on_a_score_matrix_equal_the_losses_on_embeddings():
    import torch.nn.functional as F

    from alignfuse.losses import InfoNCELoss, TripletLoss

    torch.manual_seed(1)
    a, b = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    cos = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    nce = InfoNCELoss(temperature=0.1, label_smoothing=0.1)
    assert torch.allclose(nce.from_similarity(cos).loss, nce(a, b).loss, rtol=1e-12)
    emb, mat = (
        TripletLoss(mining="hardest", sum_warmup=2),
        TripletLoss(mining="hardest", sum_warmup=2),
    )
    for call in range(4):  # two warm-up calls (sum over negatives), then the hardest
        want, got = emb(a, b), mat.from_similarity(cos)
        assert torch.allclose(got.loss, want.loss, rtol=1e-12)
        assert got.logs["hardest"] == want.logs["hardest"] == float(call >= 2)
    assert int(mat.num_calls) == int(emb.num_calls) == 4
