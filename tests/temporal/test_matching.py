"""clips data, the graph matcher and its Sinkhorn layer, warping_path, the engine loop, and
clip-to-clause localisation."""

import numpy as np
import pytest
import torch

from alignfuse.data.clips import EVENTS, load_clips, make_clip
from alignfuse.engine.fit import fit_module
from alignfuse.errors import DataError, TrainingDivergedError
from alignfuse.tasks.clip_clause import localize, scores, train_embedder, train_matcher
from alignfuse.temporal import GraphMatcher, chain_adjacency, dtw_path, warping_path
from alignfuse.transport import sinkhorn, sinkhorn_layer


def test_clips_are_deterministic_and_consistent(tmp_path):
    a = load_clips(n_train=5, n_val=2, n_test=3, cache_dir=tmp_path)
    b = load_clips(n_train=5, n_val=2, n_test=3, use_cache=False)
    for ca, cb in zip(a["train"].clips, b["train"].clips, strict=True):
        assert (
            np.array_equal(ca.frames, cb.frames)
            and ca.clauses == cb.clauses
            and ca.spans == cb.spans
        )
    for clip in a["test"].clips:
        assert 3 <= len(clip.clauses) <= 5 and clip.frames.dtype == np.uint8
        assert clip.spans[0][0] == 0 and clip.spans[-1][1] == len(clip.frames)
        assert all(
            s[1] == t[0] for s, t in zip(clip.spans, clip.spans[1:], strict=False)
        )  # contiguous
        assert all(
            c != d for c, d in zip(clip.clauses, clip.clauses[1:], strict=False)
        )  # no event twice in a row
        assert np.bincount(clip.labels()).tolist() == [b - a for a, b in clip.spans]
    with pytest.raises(DataError, match="n_train"):
        load_clips(n_train=0)


def test_clip_events_show_in_the_pixels():
    rng = np.random.default_rng(3)
    for _ in range(30):
        clip = make_clip(rng)
        for (a, b), clause in zip(clip.spans, clip.clauses, strict=True):
            seg = clip.frames[a:b].astype(float)
            if "moves" in clause and b - a >= 3:
                # the actor's centre of brightness moves in the named direction
                w = seg.sum(-1)
                w = np.where(w > w.mean(axis=(1, 2), keepdims=True) * 2, w, 0)
                ys, xs = np.indices(w.shape[1:])
                cx = (w * xs).sum((1, 2)) / w.sum((1, 2))
                cy = (w * ys).sum((1, 2)) / w.sum((1, 2))
                d = {
                    "left": -(cx[-1] - cx[0]),
                    "right": cx[-1] - cx[0],
                    "up": -(cy[-1] - cy[0]),
                    "down": cy[-1] - cy[0],
                }
                assert d[clause.split()[-1]] > 0.5, clause
    assert set(EVENTS) >= {"grows", "shrinks", "waits", "turns"}


def test_sinkhorn_layer_converges_to_the_solver_plan():
    """The unrolled layer and the solver are the same iterations: at convergence the layer's
    plan is the solver's for the cost -scores at reg 1 (rows 1 each, columns n / m)."""
    torch.manual_seed(0)
    scores = torch.randn(9, 4, dtype=torch.float64)
    plan = sinkhorn_layer(scores, n_iters=2000).exp()
    ref = sinkhorn(
        torch.ones(9, dtype=torch.float64),
        torch.full((4,), 9 / 4, dtype=torch.float64),
        -scores,
        reg=1.0,
        max_iter=5000,
    ).plan
    torch.testing.assert_close(plan, ref, rtol=1e-9, atol=1e-12)


def test_sinkhorn_layer_marginals_and_gradients():
    scores_ = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    logp = sinkhorn_layer(scores_, n_iters=200)
    p = logp.exp()
    torch.testing.assert_close(p.sum(1), torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(p.sum(0), torch.full((3,), 7 / 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda s: sinkhorn_layer(s, n_iters=5), (scores_,))
    with pytest.raises(ValueError, match="non-empty"):
        sinkhorn_layer(torch.zeros(0, 3))


def test_graph_matcher_shapes_and_bad_input():
    m = GraphMatcher(dim=6, hidden=16)
    logp = m(torch.randn(10, 6), torch.randn(4, 6), chain_adjacency(10), chain_adjacency(4))
    assert logp.shape == (10, 4)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(10))
    with pytest.raises(ValueError, match="left must be"):
        m(torch.randn(10, 5), torch.randn(4, 6), chain_adjacency(10), chain_adjacency(4))
    with pytest.raises(ValueError, match="right_adj"):
        m(torch.randn(10, 6), torch.randn(4, 6), chain_adjacency(10), chain_adjacency(3))
    with pytest.raises(ValueError, match="hidden"):
        GraphMatcher(dim=6, hidden=10)
    a = chain_adjacency(4)
    assert a.tolist() == [[0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 1, 0]]


def test_warping_path_equals_dtw_path_on_the_same_costs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(6, 2))
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    p1, v1 = warping_path(cost)
    p2, v2 = dtw_path(x, y)
    assert p1.tolist() == p2.tolist()
    assert float(v1) == pytest.approx(float(v2) ** 2)
    # negative costs are fine (log-probabilities)
    p3, _ = warping_path(-cost)
    assert p3[0].tolist() == [0, 0] and p3[-1].tolist() == [8, 5]
    with pytest.raises(ValueError, match="NaN"):
        warping_path(np.full((2, 2), np.nan))


def test_localize_methods_on_perfect_embeddings():
    # frames carry exactly their clause's embedding: every order-aware method is exact
    clip = make_clip(np.random.default_rng(1))
    k = len(clip.clauses)
    clauses = torch.eye(k, 8)
    frames = clauses[torch.from_numpy(clip.labels())]
    for method in ("argmax", "dtw", "ot"):
        pred = localize(method, len(frames), frames, clauses)
        sc = scores([clip], [pred])
        assert sc["frame_acc"] >= (0.9 if method == "ot" else 1.0), method
    uni = localize("uniform", len(frames), None, None, n_clauses=k)
    assert uni[0] == 0 and uni[-1] == k - 1 and (np.diff(uni) >= 0).all()
    with pytest.raises(ValueError, match="needs a trained matcher"):
        localize("graph", len(frames), frames, clauses)
    with pytest.raises(ValueError, match="unknown localisation"):
        localize("viterbi", len(frames), frames, clauses)


def test_scores_reference_values():
    clip = make_clip(np.random.default_rng(2))
    truth = clip.labels()
    assert scores([clip], [truth]) == {"frame_acc": 1.0, "span_iou": 1.0}
    shifted = np.roll(truth, 1)
    sc = scores([clip], [shifted])
    assert sc["frame_acc"] == pytest.approx(np.mean(shifted == truth))


@pytest.mark.slow
def test_training_learns_and_resumes(tmp_path):
    data = load_clips(n_train=40, n_val=2, n_test=20, cache_dir=tmp_path / "cache")
    vocab = data.vocabulary()
    embed, hist = train_embedder(
        data["train"], vocab, epochs=4, checkpoint_dir=tmp_path / "e", progress=False
    )
    assert hist[-1] < hist[0]
    _, hist2 = train_embedder(
        data["train"], vocab, epochs=4, checkpoint_dir=tmp_path / "e", progress=False
    )
    assert hist2 == hist  # resumed from the last checkpoint: nothing left to run
    matcher, mh = train_matcher(data["train"], embed, epochs=3, progress=False)
    assert mh[-1] < mh[0]
    preds = [
        localize("graph_dtw", len(c.frames), *embed(c), matcher=matcher) for c in data["test"].clips
    ]
    uni = [
        localize("uniform", len(c.frames), None, None, n_clauses=len(c.clauses))
        for c in data["test"].clips
    ]
    assert (
        scores(data["test"].clips, preds)["frame_acc"]
        > scores(data["test"].clips, uni)["frame_acc"] - 0.1
    )


def test_fit_module_stops_on_nan_and_checks_epochs():
    batches = lambda epoch: [0, 1]  # noqa: E731

    def bad(net, _):
        return net(torch.full((1, 2), float("nan"))).sum()

    build = lambda: torch.nn.Linear(2, 1)  # noqa: E731
    with pytest.raises(TrainingDivergedError, match="toy: loss is nan at step 0 .epoch 1"):
        fit_module("toy", build, batches, bad, epochs=2, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit_module("toy", build, batches, bad, epochs=0, lr=0.1, progress=False)


def test_fit_module_resumes_exactly_and_keeps_the_callers_seed(tmp_path):
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)

    def batches(epoch):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch))
        return [order[s : s + 8] for s in range(0, 40, 8)]

    def loss(net, idx):  # dropout: the loop's seeding decides the masks
        return ((net(x[idx]) - y[idx]) ** 2).mean()

    def build():
        return torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1)
        )

    run = dict(lr=0.05, seed=3, progress=False)
    full, hist = fit_module("toy", build, batches, loss, epochs=4, **run)
    fit_module("toy", build, batches, loss, epochs=2, checkpoint_dir=tmp_path, **run)
    resumed, hist2 = fit_module(
        "toy", build, batches, loss, epochs=4, checkpoint_dir=tmp_path, **run
    )
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert hist2 == hist and len(hist) == 4 and hist[-1] < hist[0]
    # the loop's step equals a plain AdamW loop on the same batches and seed
    torch.manual_seed(3)
    net = build()
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.0)
    for epoch in range(4):
        for idx in batches(epoch):
            opt.zero_grad()
            loss(net, idx).backward()
            opt.step()
    for k, v in full.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    # seed=None: the module the caller built and seeded, trained as it is
    torch.manual_seed(3)
    mine = build()
    trained, _ = fit_module(
        "toy", lambda: mine, batches, loss, epochs=4, lr=0.05, seed=None, progress=False
    )
    assert trained is mine
