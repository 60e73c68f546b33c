"""The loss family against plain loops, published pseudo-code and pytorch-metric-learning."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import alignfuse
from alignfuse.losses import (
    contrastive,
    info_nce,
    matching,
    n_pair,
    ranking,
    sample_hard_negatives,
    sigmoid_loss,
    smooth_ap,
    structure_preserving,
    token_wise,
    token_wise_similarity,
    triplet,
    triplet_center,
)

DT = [torch.float32, torch.float64]


def _pairs(n=6, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _tol(dtype):
    return dict(rel=1e-5, abs=1e-6) if dtype == torch.float32 else dict(rel=1e-10, abs=1e-12)


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dist(u, v):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(u, v, strict=True)))


def _dot(u, v):
    return sum(x * y for x, y in zip(u, v, strict=True))


# ---------------------------------------------------------------- loops


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_contrastive_loop(dtype, power):
    a, b = _pairs(dtype=dtype)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    A, B = [_norm(r) for r in a.tolist()], [_norm(r) for r in b.tolist()]
    pos, neg = [], []
    for i, j in itertools.product(range(6), range(6)):
        d = _dist(A[i], B[j])
        if labels[i] == labels[j]:
            pos.append(max(0.0, d - 0.1) ** power)
        else:
            neg.append(max(0.0, 1.2 - d) ** power)
    want = sum(pos) / len(pos) + sum(neg) / len(neg)
    got = contrastive(a, b, margin=1.2, pos_margin=0.1, power=power, labels=labels)
    assert float(got) == pytest.approx(want, **_tol(dtype))


@pytest.mark.parametrize("dtype", DT)
def test_semihard_triplet_loop(dtype):
    a, b = _pairs(n=7, dtype=dtype, seed=3)
    s = (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).tolist()
    m, total = 0.3, 0.0
    for i in range(7):
        for row in ([s[i][j] for j in range(7)], [s[j][i] for j in range(7)]):
            negs = [(row[j], j) for j in range(7) if j != i]
            below = [v for v, _ in negs if v < row[i]]
            pick = max(below) if below else max(v for v, _ in negs)
            total += max(0.0, m - row[i] + pick)
    assert float(triplet(a, b, m, "semihard")) == pytest.approx(total, **_tol(dtype))


def test_triplet_labels_remove_same_class_negatives():
    a, b = _pairs(n=4)
    labels = torch.tensor([0, 0, 1, 1])
    s = (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).tolist()
    total = 0.0
    for i, j in itertools.product(range(4), range(4)):
        if labels[i] != labels[j]:
            total += max(0.0, 0.2 - s[i][i] + s[i][j]) + max(0.0, 0.2 - s[i][i] + s[j][i])
    assert float(triplet(a, b, labels=labels)) == pytest.approx(total)


@pytest.mark.parametrize("dtype", DT)
def test_n_pair_loop(dtype):
    a, b = _pairs(dtype=dtype)
    A, B = a.tolist(), b.tolist()
    per = []
    for i in range(6):
        per.append(
            math.log(
                1 + sum(math.exp(_dot(A[i], B[j]) - _dot(A[i], B[i])) for j in range(6) if j != i)
            )
            + 0.01 * (_dot(A[i], A[i]) + _dot(B[i], B[i]))
        )
    assert float(n_pair(a, b, l2_reg=0.01)) == pytest.approx(sum(per) / 6, **_tol(dtype))


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_info_nce_multi_positive_loop(dtype, smoothing):
    a, b = _pairs(n=5, dtype=dtype, seed=7)
    labels = torch.tensor([0, 1, 0, 2, 1])
    tau = 0.3
    A, B = [_norm(r) for r in a.tolist()], [_norm(r) for r in b.tolist()]
    s = [[_dot(A[i], B[j]) / tau for j in range(5)] for i in range(5)]

    def side(mat):
        out = []
        for i in range(5):
            lse = math.log(sum(math.exp(v) for v in mat[i]))
            posi = [j for j in range(5) if labels[i] == labels[j]]
            q = [
                ((1 - smoothing) / len(posi) if j in posi else 0.0) + smoothing / 5
                for j in range(5)
            ]
            out.append(-sum(q[j] * (mat[i][j] - lse) for j in range(5)))
        return out

    rows, cols = side(s), side([list(c) for c in zip(*s, strict=True)])
    want = sum((r + c) / 2 for r, c in zip(rows, cols, strict=True)) / 5
    got = info_nce(a, b, math.log(1 / tau), labels=labels, label_smoothing=smoothing)
    assert float(got) == pytest.approx(want, **_tol(dtype))
    mask = labels[:, None] == labels[None, :]
    assert torch.allclose(
        got, info_nce(a, b, math.log(1 / tau), positive_mask=mask, label_smoothing=smoothing)
    )


def siglip_paper_reference(zimg, ztxt, t_prime, b):
    """Pseudo-code of Zhai et al. 2023, Algorithm 1, written out."""
    n = len(zimg)
    t = math.exp(t_prime)
    zimg = zimg / zimg.norm(dim=1, keepdim=True)
    ztxt = ztxt / ztxt.norm(dim=1, keepdim=True)
    logits = zimg @ ztxt.T * t + b
    labels = 2 * torch.eye(n, dtype=logits.dtype) - torch.ones(n, n, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / n


@pytest.mark.parametrize("dtype", DT)
def test_sigmoid_matches_siglip_pseudocode(dtype):
    a, b = _pairs(n=9, d=4, dtype=dtype, seed=2)
    got = sigmoid_loss(a, b, math.log(10.0), -10.0)
    assert torch.allclose(got, siglip_paper_reference(a, b, math.log(10.0), -10.0))
    got2 = sigmoid_loss(a, b, 0.3, 0.5)
    assert float(got2) == pytest.approx(
        float(siglip_paper_reference(a, b, 0.3, 0.5)), **_tol(dtype)
    )


def _ap_loop(scores, positives, tau):
    out = []
    for q in range(len(scores)):
        s, p = scores[q], positives[q]
        m = len(s)
        sg = lambda x: 1 / (1 + math.exp(-x / tau))  # noqa: E731
        terms = []
        for i in range(m):
            if not p[i]:
                continue
            r_all = 1 + sum(sg(s[j] - s[i]) for j in range(m) if j != i)
            r_pos = 1 + sum(sg(s[j] - s[i]) for j in range(m) if j != i and p[j])
            terms.append(r_pos / r_all)
        out.append(sum(terms) / len(terms))
    return out


def test_smooth_ap_loop_and_limit():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 7, generator=g, dtype=torch.float64)
    pos = torch.rand(4, 7, generator=g) < 0.4
    pos[:, 0] = True
    got = smooth_ap(scores, pos, tau=0.5)
    assert np.allclose(got.numpy(), _ap_loop(scores.tolist(), pos.tolist(), 0.5))
    # tau -> 0: exact average precision from a sort
    exact = []
    for q in range(4):
        order = torch.argsort(scores[q], descending=True)
        hits = pos[q][order].double()
        prec = hits.cumsum(0) / torch.arange(1, 8)
        exact.append(float((prec * hits).sum() / hits.sum()))
    assert np.allclose(smooth_ap(scores, pos, tau=1e-6).numpy(), exact, atol=1e-6)


def test_ranking_is_one_minus_mean_ap_both_ways():
    a, b = _pairs(n=5)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    eye = torch.eye(5, dtype=torch.bool)
    ap = (smooth_ap(s, eye, 0.1) + smooth_ap(s.T, eye, 0.1)) / 2
    assert torch.allclose(ranking(a, b, tau=0.1, reduction="none"), 1 - ap)


@pytest.mark.parametrize("dtype", DT)
def test_triplet_center_loop(dtype):
    a, b = _pairs(n=5, d=3, dtype=dtype)
    c = torch.randn(3, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 0, 2])
    C = c.tolist()
    total = 0.0
    for x in (a.tolist(), b.tolist()):
        for i in range(5):
            own = _dist(x[i], C[labels[i]])
            other = min(_dist(x[i], C[k]) for k in range(3) if k != labels[i])
            total += max(0.0, own + 0.7 - other)
    got = triplet_center(a, b, labels, c, margin=0.7)
    assert float(got) == pytest.approx(total / 10, **_tol(dtype))


def _sp_term(d, q, m):
    vals = []
    n = len(d)
    for i in range(n):
        for j in range(n):
            if not q[i][j]:
                continue
            for k in range(n):
                if k != i and not q[i][k] and k != j:
                    vals.append(max(0.0, m + d[i][j] - d[i][k]))
    return sum(vals) / len(vals) if vals else 0.0


def test_structure_preserving_loop():
    a, b = _pairs(n=6, d=4)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    A, B = [_norm(r) for r in a.tolist()], [_norm(r) for r in b.tolist()]
    n, m = 6, 0.2
    same = [[bool(labels[i] == labels[j]) for j in range(n)] for i in range(n)]
    d_ab = [[_dist(A[i], B[j]) for j in range(n)] for i in range(n)]
    d_ba = [[d_ab[j][i] for j in range(n)] for i in range(n)]
    d_aa = [[_dist(A[i], A[j]) for j in range(n)] for i in range(n)]
    d_bb = [[_dist(B[i], B[j]) for j in range(n)] for i in range(n)]
    neigh = [[same[i][j] and i != j for j in range(n)] for i in range(n)]
    # for the within terms the "non-neighbours" exclude i itself and the same class
    want = _sp_term(d_ab, same, m) + _sp_term(d_ba, same, m)
    want += 0.1 * _sp_term_within(d_aa, neigh, same, m) + 0.1 * _sp_term_within(
        d_bb, neigh, same, m
    )
    got = structure_preserving(a, b, labels, margin=m)
    assert float(got) == pytest.approx(want, rel=1e-9)


def _sp_term_within(d, neigh, same, m):
    vals = []
    n = len(d)
    for i in range(n):
        for j in range(n):
            if neigh[i][j]:
                vals.extend(max(0.0, m + d[i][j] - d[i][k]) for k in range(n) if not same[i][k])
    return sum(vals) / len(vals)


def test_token_wise_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    mx = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    my = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    X = [[_norm(t) for t in item] for item in x.tolist()]
    Y = [[_norm(t) for t in item] for item in y.tolist()]
    sa = np.zeros((3, 3))
    sb = np.zeros((3, 3))
    for i, j in itertools.product(range(3), range(3)):
        xs = [X[i][k] for k in range(4) if mx[i, k]]
        ys = [Y[j][r] for r in range(6) if my[j, r]]
        sa[i, j] = np.mean([max(_dot(u, v) for v in ys) for u in xs])
        sb[i, j] = np.mean([max(_dot(u, v) for u in xs) for v in ys])
    got_a, got_b = token_wise_similarity(x, y, mx, my, chunk=2)
    assert np.allclose(got_a.numpy(), sa) and np.allclose(got_b.numpy(), sb)
    t = 2.0
    want = 0.5 * (
        F.cross_entropy(torch.tensor(sa) * t, torch.arange(3))
        + F.cross_entropy(torch.tensor(sb).T * t, torch.arange(3))
    )
    assert float(token_wise(x, y, mx, my, math.log(t))) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="masks every token"):
        token_wise_similarity(x, y, torch.zeros(3, 4, dtype=torch.bool), my)


def test_token_wise_single_tokens_reduce_to_info_nce():
    a, b = _pairs()
    loss = alignfuse.create_loss("token_wise", temperature=0.5)
    assert torch.allclose(loss(a, b).loss, info_nce(a, b, math.log(2.0)))


def test_hard_negative_sampling_follows_softmax():
    sims = torch.tensor(
        [[5.0, 1.0, 2.0, 0.0], [0.0, 5.0, 3.0, 3.0], [1.0, 1.0, 5.0, 1.0], [2.0, 0.0, 0.0, 5.0]]
    )
    pos = torch.eye(4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    counts = np.zeros((4, 4))
    for _ in range(4000):
        nb, _ = sample_hard_negatives(sims, pos, g)
        counts[np.arange(4), nb.numpy()] += 1
    want = sims.masked_fill(pos, float("-inf")).softmax(1).numpy()
    assert np.allclose(counts / 4000, want, atol=0.03)
    assert (np.diag(counts) == 0).all()


def test_matching_loss_is_cross_entropy_over_pos_and_sampled_negatives():
    a, b = _pairs(n=4, d=3)
    head = alignfuse.losses.PairHead(3).double()
    sims = a @ b.T
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss, _, targets = matching(head, a, b, sims, generator=g1)
    nb, na = sample_hard_negatives(sims, torch.eye(4, dtype=torch.bool), g2)
    manual = []
    for i in range(4):
        manual.append(-F.log_softmax(head(a[i : i + 1], b[i : i + 1]), 1)[0, 1])
    for i in range(4):
        manual.append(-F.log_softmax(head(a[i : i + 1], b[nb[i] : nb[i] + 1]), 1)[0, 0])
    for j in range(4):
        manual.append(-F.log_softmax(head(a[na[j] : na[j] + 1], b[j : j + 1]), 1)[0, 0])
    assert float(loss.detach()) == pytest.approx(float(torch.stack(manual).mean().detach()))
    assert targets.tolist() == [1] * 4 + [0] * 8
    with pytest.raises(ValueError, match="no negative"):
        matching(head, a, b, sims, labels=torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: contrastive(a, b, margin=2.0),
        lambda a, b: triplet(a, b, 0.5, "semihard"),
        lambda a, b: n_pair(a, b, 0.01, True),
        lambda a, b: info_nce(a, b, 0.5, labels=torch.tensor([0, 1, 0, 2]), label_smoothing=0.1),
        lambda a, b: sigmoid_loss(a, b, 0.5, -1.0),
        lambda a, b: ranking(a, b, tau=0.5),
        lambda a, b: structure_preserving(a, b, torch.tensor([0, 1, 0, 1]), margin=1.0),
        lambda a, b: token_wise(
            a[:, None].expand(4, 2, 3) * torch.tensor([1.0, 0.5, 2.0]), b[:, None]
        ),
    ],
    ids=[
        "contrastive",
        "semihard",
        "n_pair",
        "info_nce_multi",
        "sigmoid",
        "ranking",
        "structure",
        "token_wise",
    ],
)
def test_gradcheck(fn):
    a, b = _pairs(n=4, d=3, seed=11)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (a, b))


# ---------------------------------------------------------------- registry-wide contract

NEEDS = {"triplet_center": {"num_classes": 3, "dim": 5}, "matching": {"dim": 5}}
STOCHASTIC = {"matching"}


@pytest.mark.parametrize("name", alignfuse.list_losses())
@pytest.mark.parametrize("dtype", DT)
def test_every_registered_loss_contract(name, dtype):
    torch.manual_seed(0)
    loss = alignfuse.create_loss(name, **NEEDS.get(name, {})).to(dtype)
    a, b = _pairs(n=6, dtype=dtype, seed=4)
    a.requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    kwargs = {"labels": labels} if name == "triplet_center" else {}
    out = loss(a, b, **kwargs)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == dtype
    out.loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    if name not in STOCHASTIC:
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        kw = {"labels": labels[perm]} if kwargs else {}
        again = loss(a.detach()[perm], b[perm], **kw).loss
        assert torch.allclose(again, out.loss.detach(), rtol=1e-5)


def test_injected_similarities():
    a, b = _pairs(n=5)
    neg_l2 = triplet(a, b, 0.3, "hardest", similarity="neg_l2")
    custom = triplet(a, b, 0.3, "hardest", similarity=lambda x, y: -torch.cdist(x, y))
    assert torch.allclose(neg_l2, custom)
    dot = info_nce(a, b, 0.0, similarity="dot")
    assert torch.allclose(dot, info_nce(a, b, 0.0, similarity=lambda x, y: x @ y.T))
    with pytest.raises(ValueError, match="must return"):
        info_nce(a, b, similarity=lambda x, y: x[:, :2])
    with pytest.raises(ValueError, match="similarity must be one of"):
        info_nce(a, b, similarity="l1")
    with pytest.raises(ValueError, match="'cosine' or 'dot'"):
        info_nce(a, b, similarity="neg_l2", chunk_size=2)


@pytest.mark.parametrize("fn", [info_nce, triplet, sigmoid_loss, contrastive, ranking])
def test_labels_of_the_wrong_shape_or_type(fn):
    a, b = _pairs(n=4)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        fn(a, b, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        fn(a, b, labels=torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_losses_on_a_precomputed_similarity_matrix():
    from alignfuse.losses import info_nce_from_similarity, triplet_from_similarity

    a, b = _pairs(n=6)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    for mining in ("sum", "hardest", "semihard"):
        assert torch.allclose(triplet_from_similarity(s, 0.2, mining), triplet(a, b, 0.2, mining))
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    assert torch.allclose(
        info_nce_from_similarity(s, 1.0, labels=labels, label_smoothing=0.1),
        info_nce(a, b, 1.0, labels=labels, label_smoothing=0.1),
    )
    with pytest.raises(ValueError, match="square"):
        triplet_from_similarity(s[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        info_nce_from_similarity(s * float("nan"))


def test_local_contrastive_loop():
    from alignfuse.losses import local_contrastive, local_similarity

    g = torch.Generator().manual_seed(1)
    regions = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    words = torch.randn(3, 3, 5, generator=g, dtype=torch.float64)
    wm = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    R, W = regions.tolist(), words.tolist()
    z = np.zeros((3, 3))
    for i, j in itertools.product(range(3), range(3)):
        terms = []
        for k in range(3):
            if not wm[j, k]:
                continue
            wn = _norm(W[j][k])
            logits = [4.0 * _dot(wn, _norm(R[i][r])) for r in range(4)]
            mx = max(logits)
            e = [math.exp(v - mx) for v in logits]
            att = [v / sum(e) for v in e]
            c = [sum(att[r] * R[i][r][d] for r in range(4)) for d in range(5)]
            terms.append(5.0 * _dot(_norm(c), wn))
        z[i, j] = math.log(sum(math.exp(t) for t in terms)) / 5.0
    got = local_similarity(regions, words, wm, chunk=2)
    assert np.allclose(got.numpy(), z)
    want = info_nce_from_sims_reference(torch.tensor(z), 10.0)
    assert float(local_contrastive(regions, words, wm)) == pytest.approx(want)


def info_nce_from_sims_reference(z, scale):
    t = torch.arange(len(z))
    return float(0.5 * (F.cross_entropy(z * scale, t) + F.cross_entropy(z.T * scale, t)))
