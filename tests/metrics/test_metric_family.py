"""Diagnostics, retrieval mAP, classification and caption metrics against references:
scikit-learn, pycocoevalcap (the COCO caption server's code), the papers' own formulas and
naive loops."""

import itertools
import math

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.metrics import (
    alignment,
    bleu,
    cider,
    cka,
    f1_scores,
    modality_gap,
    retrieval_map,
    retrieval_ranks,
    roc_auc,
    rouge_l,
    uniformity,
)
from alignfuse.metrics.captioning import tokenize


def _unit(v):
    return v / np.linalg.norm(v)


# --- diagnostics ------------------------------------------------------------------------


def test_alignment_equals_the_mean_over_pairs_of_the_distance_power():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    for alpha in (1.0, 2.0, 3.5):
        ref = np.mean(
            [np.linalg.norm(_unit(x) - _unit(y)) ** alpha for x, y in zip(a, b, strict=True)]
        )
        assert alignment(a, b, alpha=alpha) == pytest.approx(ref, rel=1e-12)
    raw = np.mean([np.linalg.norm(x - y) ** 2 for x, y in zip(a, b, strict=True)])
    assert alignment(torch.from_numpy(a).float(), b, normalize=False) == pytest.approx(
        raw, rel=1e-6
    )
    assert alignment(a, a) == 0.0


def test_uniformity_equals_the_papers_pdist_expression_and_a_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, 5))
    z = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    for t in (0.5, 2.0, 7.0):
        paper = float(torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log())
        u = [_unit(v) for v in x]
        loop = math.log(
            np.mean(
                [
                    math.exp(-t * np.sum((u[i] - u[j]) ** 2))
                    for i, j in itertools.combinations(range(37), 2)
                ]
            )
        )
        for chunk in (1, 5, 2048):
            assert uniformity(x, t=t, chunk=chunk) == pytest.approx(paper, abs=1e-12)
        assert paper == pytest.approx(loop, abs=1e-12)
    # a collapsed embedding is as far from uniform as possible: log 1 = 0
    assert uniformity(np.ones((10, 3))) == pytest.approx(0.0, abs=1e-12)


def test_uniformity_stays_finite_where_exp_underflows():
    # +-e1, +-e2 at t = 500: four pairs at squared distance 2, two at 4; exp(-1000) is 0 in
    # float64 (the pdist expression gives -inf), the log-sum-exp is -1000 + log(4 / 6)
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    z = torch.from_numpy(x)
    assert float(torch.pdist(z).pow(2).mul(-500.0).exp().mean().log()) == -math.inf
    assert uniformity(x, t=500.0) == pytest.approx(-1000 + math.log(4 / 6), rel=1e-12)


def test_modality_gap_is_the_distance_between_the_centres_of_unit_vectors():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 4)) + 2.0, rng.normal(size=(17, 4)) - 1.0
    ref = np.linalg.norm(np.mean([_unit(v) for v in a], 0) - np.mean([_unit(v) for v in b], 0))
    assert modality_gap(a, b) == pytest.approx(ref, rel=1e-12)
    # row scaling does not move it; shifting one modality does
    assert modality_gap(a * rng.uniform(0.1, 9, size=(30, 1)), b) == pytest.approx(ref, rel=1e-12)
    assert modality_gap(a, a) == 0.0


def _hsic_h(k, lm):
    """tr(K H L H) with the explicit centring matrix H."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ lm @ h)


def _hsic_song(k, lm):
    """The unbiased HSIC estimator as Song et al. 2012 write it (zero-diagonal Grams)."""
    n = len(k)
    k, lm = k.copy(), lm.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(lm, 0)
    one = np.ones(n)
    return (
        np.trace(k @ lm)
        + (one @ k @ one) * (one @ lm @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ lm @ one)
    ) / (n * (n - 3))


def _rbf(x, sigma):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2 * np.median(d2)))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_equals_the_hsic_formulas(kernel, debiased):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 6))
    y = np.tanh(x @ rng.normal(size=(6, 9))) + 0.3 * rng.normal(size=(25, 9))
    gram = (lambda v: v @ v.T) if kernel == "linear" else (lambda v: _rbf(v, 0.8))
    k, lm = gram(x), gram(y)
    hsic = _hsic_song if debiased else _hsic_h
    ref = hsic(k, lm) / math.sqrt(hsic(k, k) * hsic(lm, lm))
    got = cka(x, y, kernel=kernel, sigma=0.8 if kernel == "rbf" else 1.0, debiased=debiased)
    assert got == pytest.approx(ref, rel=1e-10)


def test_cka_invariances_and_identity():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 8))
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, 5.0 * x @ q + 3.0) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, x @ q, kernel="rbf") == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(60, 3))
    assert cka(x, y) == pytest.approx(cka(2.0 * x @ q, y), rel=1e-12)
    # an arbitrary invertible (non-orthogonal) map changes linear CKA
    assert abs(cka(x, x @ np.diag(np.arange(1.0, 9.0) ** 2)) - 1.0) > 1e-3
    # unrelated representations: small, and the debiased estimate is near 0
    assert cka(x, y) < 0.3
    assert abs(cka(x, y, debiased=True)) < 0.05


def test_diagnostics_reject_bad_inputs():
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="pair their rows"):
        alignment(x, x[:4])
    with pytest.raises(ValueError, match="share a dimension"):
        modality_gap(x, np.ones((5, 2)))
    bad = np.random.default_rng(0).normal(size=(5, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        uniformity(bad)
    with pytest.raises(ValueError, match="at least 2 row"):
        uniformity(x[:1])
    with pytest.raises(ValueError, match="2-D"):
        cka(x[0], x[0])
    with pytest.raises(ValueError, match="constant"):
        cka(x, np.random.default_rng(0).normal(size=(5, 2)))
    with pytest.raises(ValueError, match="kernel"):
        cka(bad, bad, kernel="cosine")
    with pytest.raises(ValueError, match="at least 4"):
        cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="numeric"):
        alignment(np.array([["a"]]), np.array([["b"]]))


def test_embedding_diagnostics_of_a_dual_encoder_are_the_single_metrics():
    from alignfuse.metrics.diagnostics import embedding_diagnostics

    rng = np.random.default_rng(8)
    img, txt = rng.normal(size=(6, 4)), rng.normal(size=(15, 4))
    owner = np.arange(15) % 6
    got = embedding_diagnostics(torch.from_numpy(img), torch.from_numpy(txt), owner)
    assert got == {
        "modality_gap": modality_gap(img, txt),
        "alignment": alignment(img[owner], txt),
        "uniformity_image": uniformity(img),
        "uniformity_text": uniformity(txt),
    }
    with pytest.raises(ValueError, match="owner must hold 15 image indices"):
        embedding_diagnostics(img, txt, owner + 1)


def test_diagnostics_are_registered():
    for name in (
        "alignment",
        "uniformity",
        "modality_gap",
        "cka",
        "retrieval_map",
        "f1",
        "roc_auc",
    ):
        assert name in alignfuse.registry.METRICS.names()


# --- retrieval mAP ------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_map_matches_sklearn_average_precision(ties):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    n_img, per = 12, 3
    owner = np.repeat(np.arange(n_img), per)
    rng.shuffle(owner)
    sims = rng.normal(size=(n_img, n_img * per)) + 1.5 * (
        owner[None, :] == np.arange(n_img)[:, None]
    )
    if ties:
        sims = np.round(sims, 0)
    i2t = np.mean([average_precision_score(owner == i, sims[i]) for i in range(n_img)])
    t2i = np.mean(
        [average_precision_score(np.arange(n_img) == o, sims[:, t]) for t, o in enumerate(owner)]
    )
    for chunk in (1, 5, 1024):
        m = retrieval_map(torch.from_numpy(sims), owner, chunk=chunk)
        assert m["i2t_map"] == pytest.approx(i2t, rel=1e-12)
        assert m["t2i_map"] == pytest.approx(t2i, rel=1e-12)
    # one positive per caption: AP is 1 / rank, the (pessimistic) rank of retrieval_ranks
    _, t2i_rank = retrieval_ranks(sims, owner)
    assert m["t2i_map"] == pytest.approx(np.mean(1.0 / t2i_rank), rel=1e-12)


def test_retrieval_map_rejects_bad_owner():
    sims = np.zeros((2, 3))
    with pytest.raises(ValueError, match="owner must have shape"):
        retrieval_map(sims, [0, 1])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_map(sims, [0, 0, 0])
    with pytest.raises(ValueError, match="integer image indices"):
        retrieval_map(sims, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        retrieval_map(sims, [0, 1, 1], chunk=0)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        retrieval_ranks(sims, [0, 1, 1], chunk=0)


# --- classification ----------------------------------------------------------------------


def test_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(6)
    t = rng.integers(0, 5, size=200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 6, size=200))  # class 5 only predicted
    got = f1_scores(torch.from_numpy(t), p)
    for avg in ("macro", "micro", "weighted"):
        assert got[f"f1_{avg}"] == pytest.approx(f1_score(t, p, average=avg), rel=1e-12)
    got = f1_scores(t, p, num_classes=8)  # classes 6, 7 absent from both: F1 0
    ref = f1_score(t, p, average="macro", labels=np.arange(8), zero_division=0)
    assert got["f1_macro"] == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        f1_scores(t, p[:-1])
    with pytest.raises(ValueError, match="num_classes"):
        f1_scores(t, p, num_classes=3)
    with pytest.raises(ValueError, match="integer class labels"):
        f1_scores(t + 0.5, p)


def test_roc_auc_matches_sklearn_binary_with_ties_and_multiclass():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=300)
    s = np.round(y + rng.normal(size=300), 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    yc = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)) + 1.2 * np.eye(4)[yc]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = roc_auc_score(yc, prob, multi_class="ovr", average="macro")
    assert roc_auc(yc, torch.from_numpy(prob)) == pytest.approx(ref, rel=1e-12)
    assert roc_auc(yc, logits) == pytest.approx(  # one-vs-rest only uses each column's order
        np.mean([roc_auc_score(yc == c, logits[:, c]) for c in range(4)]), rel=1e-12
    )
    with pytest.raises(ValueError, match="class 1 needs both"):
        roc_auc(np.ones(5, dtype=int), np.arange(5.0))
    with pytest.raises(ValueError, match="0 / 1"):
        roc_auc(yc, logits[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(y, np.where(y > 0, np.nan, 0.0))


# --- captioning ---------------------------------------------------------------------------


def _corpus(seed, n_items=25):
    rng = np.random.default_rng(seed)
    vocab = ["a", "the", "cat", "dog", "man", "woman", "sits", "runs", "on", "near", "red"]
    vocab += ["big", "small", "ball", "grass", "mat", "park"]

    def sentence():
        return " ".join(rng.choice(vocab, size=int(rng.integers(3, 12))))

    cands = [sentence() for _ in range(n_items)]
    refs = [[sentence() for _ in range(int(rng.integers(1, 5)))] for _ in range(n_items)]
    # some candidates copy a reference (high scores), some are very short (brevity penalty)
    cands[0] = refs[0][0]
    cands[1] = "a cat"
    return cands, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caption_metrics_match_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    cands, refs = _corpus(seed)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    ref_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    got = bleu(cands, refs)
    for k in range(4):
        assert got[f"bleu_{k + 1}"] == pytest.approx(ref_bleu[k], rel=1e-12)
    assert rouge_l(cands, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
    assert cider(cands, refs) == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)


def test_caption_metrics_facts_and_bad_inputs():
    refs = [["a man rides a horse", "a person on a horse"], ["two dogs play in the snow"]]
    perfect = [r[0] for r in refs]
    assert bleu(perfect, refs)["bleu_4"] == pytest.approx(1.0)
    assert rouge_l(perfect, refs) == pytest.approx(1.0)
    assert rouge_l(["zebra"], [["a horse"]]) == 0.0
    assert cider(perfect, refs) > cider(["a horse", "dogs"], refs)
    assert tokenize("A Man, riding... a horse!") == ["a", "man", "riding", "a", "horse"]
    assert tokenize("don't stop") == ["don't", "stop"]
    with pytest.raises(ValueError, match="pair items"):
        bleu(perfect, refs[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        cider(perfect, [refs[0], []])
    with pytest.raises(ValueError, match="list of strings"):
        rouge_l("a man", refs)
    with pytest.raises(ValueError, match="empty"):
        bleu([], [])
