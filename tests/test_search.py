"""Top-k search (exact chunked and FAISS), recall from top-k, zero-shot classification and
the classification metrics of the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignfuse.metrics import retrieval_metrics
from alignfuse.metrics.zero_shot import class_embeddings, class_prompts, zero_shot_metrics
from alignfuse.search import faiss_available, recall_at_k, topk


def _data(q: int = 37, n: int = 101, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_exact_topk_equals_a_full_sort(chunk) -> None:
    q, x = _data()
    scores, idx = topk(q, x, k=7, chunk=chunk)
    full = q @ x.T
    ref = full.argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(idx, ref)
    torch.testing.assert_close(scores, full.gather(1, ref))


def test_small_memory_budget_still_exact() -> None:
    q, x = _data(q=50, n=300)
    a = topk(q, x, k=3, memory_mb=0.001)[1]  # one query per block
    assert torch.equal(a, topk(q, x, k=3)[1])


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
def test_faiss_gives_the_exact_indices() -> None:
    q, x = _data(q=200, n=1000, d=32, seed=3)
    s_exact, i_exact = topk(q, x, k=10)
    s_faiss, i_faiss = topk(q, x, k=10, backend="faiss")
    assert torch.equal(i_exact, i_faiss)
    torch.testing.assert_close(s_exact, s_faiss, atol=1e-4, rtol=1e-5)
    assert torch.equal(topk(q.numpy(), x.numpy(), k=10, backend="auto")[1], i_exact)


def test_topk_checks_its_inputs() -> None:
    q, x = _data()
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 101\\]"):
        topk(q, x, k=0)
    with pytest.raises(ValueError, match="share their dim"):
        topk(q, x[:, :3], k=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        topk(q, x, k=1, backend="annoy")
    with pytest.raises(ValueError, match="queries contains NaN"):
        topk(q * float("nan"), x, k=1)
    with pytest.raises(ValueError, match="keys must be floating point"):
        topk(q, torch.ones(3, 16, dtype=torch.long), k=1)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        topk(q, x, k=1, chunk=0)


def test_recall_from_topk_equals_the_full_retrieval_metrics() -> None:
    img, txt = _data(q=20, n=100, d=8, seed=5)
    owner = torch.arange(100) % 20  # five captions per image
    full = retrieval_metrics(img @ txt.T, owner)
    _, i2t = topk(img, txt, k=10)
    _, t2i = topk(txt, img, k=10)
    got_i2t = recall_at_k(i2t, torch.arange(20), owner)
    got_t2i = recall_at_k(t2i, owner, torch.arange(20))
    for k in (1, 5, 10):
        assert got_i2t[f"r{k}"] == pytest.approx(full[f"i2t_r{k}"])
        assert got_t2i[f"r{k}"] == pytest.approx(full[f"t2i_r{k}"])
    with pytest.raises(ValueError, match="needs top-20"):
        recall_at_k(i2t, torch.arange(20), owner, ks=(20,))


def test_zero_shot_against_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(60, 8, generator=g)
    cls = torch.randn(6, 8, generator=g)
    y = torch.randint(0, 5, (60,), generator=g)  # class 5 has no image
    got = zero_shot_metrics(img, cls, y)
    sims = [[float(F.cosine_similarity(i, c, dim=0)) for c in cls] for i in img]
    ranked = [sorted(range(6), key=lambda c, s=s: -s[c]) for s in sims]
    top1 = np.mean([r[0] == t for r, t in zip(ranked, y.tolist(), strict=True)])
    top5 = np.mean([t in r[:5] for r, t in zip(ranked, y.tolist(), strict=True)])
    per = [
        np.mean([r[0] == c for r, t in zip(ranked, y.tolist(), strict=True) if t == c])
        for c in range(5)
    ]
    assert got["top1"] == pytest.approx(top1) and got["top5"] == pytest.approx(top5)
    assert got["mean_class"] == pytest.approx(np.mean(per))
    assert np.isnan(got["per_class"][5])
    with pytest.raises(ValueError, match="labels must be class indices"):
        zero_shot_metrics(img, cls[:3], y)


def test_prompt_ensembling() -> None:
    prompts = class_prompts(["signs_and_symbols", "food"], ["a {}.", "{}"])
    assert prompts == ["a signs and symbols.", "signs and symbols", "a food.", "food"]
    e = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    got = class_embeddings(e, 2)
    torch.testing.assert_close(got, torch.tensor([[2**-0.5, 2**-0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        class_prompts(["a"], ["no slot"])
    with pytest.raises(ValueError, match="n_classes \\* n_templates"):
        class_embeddings(e, 3)


def test_evaluator_reports_classification_on_labelled_data(tmp_path) -> None:
    from alignfuse.data.base import ImageTextData, ImageTextSplit
    from alignfuse.encoders.tokenizer import Tokenizer
    from alignfuse.engine.evaluate import evaluate
    from alignfuse.models.dual_encoder import build_dual_encoder

    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> ImageTextSplit:
        cats = [i % 3 for i in range(n)]
        caps = [[f"a {['red', 'green', 'blue'][c]} thing {i}"] for i, c in enumerate(cats)]
        images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        return ImageTextSplit(name, images, caps, {"categories": cats})

    data = ImageTextData(
        "toy",
        {"train": split("train", 30), "test": split("test", 12)},
        info={"classes": ["red", "green", "blue"]},
    )
    tok = Tokenizer.build(data.train_texts)
    torch.manual_seed(0)
    model = build_dual_encoder(
        tok,
        embed_dim=8,
        image_args={"width": 2, "out_dim": 8},
        text_args={"word_dim": 4, "hidden": 4},
    )
    metrics, _ = evaluate(model, data, ["test"])
    for key in (
        "test/zs_top1",
        "test/zs_top5",
        "test/zs_mean_class",
        "test/probe_acc",
        "test/zs_acc/red",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/zs_top5"] == 1.0  # three classes
    # unlabelled data gets no classification metrics
    plain = ImageTextData("toy", {"train": data["train"], "test": data["test"].subset(12)})
    assert not any("zs_" in k for k in evaluate(model, plain, ["test"])[0])


def test_report_tables_show_what_was_measured(tmp_path) -> None:
    from alignfuse.tasks.image_text_report import (
        _plot_per_class,
        classification_markdown,
        leaderboard_markdown,
    )

    rows = [
        {
            "name": "a",
            "status": "ok",
            "train_seconds": 3.0,
            "trainable_params": 1000,
            "metrics": {
                "test/rsum": 250.0,
                "test/zs_top1": 0.4,
                "test/probe_acc": 0.5,
                "test/init_modality_gap": 0.9,
                "test/modality_gap": 0.6,
                "test/zs_acc/food": 0.7,
                "test/zs_acc/animals": 0.2,
            },
        },
        {"name": "b", "status": "skipped", "reason": "needs the extra(s) images"},
    ]
    board = leaderboard_markdown(rows)
    assert "zero-shot top-1" in board and "40.0" in board
    assert "test_dk rsum" not in board and "wino text" not in board  # nobody measured them
    assert "precision" not in board  # every run trained in float32
    bf16 = leaderboard_markdown([{**rows[0], "precision": "bf16"}, rows[1]])
    assert "| train s | precision | params |" in bf16 and "| 3 | bf16 | 0.00M |" in bf16
    table = classification_markdown(rows)
    assert "| a | 40.0 | 50.0 | 0.900 | 0.600 |" in table
    assert _plot_per_class(rows, ["animals", "food", "office"], tmp_path / "zs.png")
    assert (tmp_path / "zs.png").stat().st_size > 1000
    assert not _plot_per_class(rows[1:], ["animals"], tmp_path / "none.png")
