"""MVAE as a generative model: closed forms of a linear-Gaussian MVAE, the sub-sampled ELBO
against a loop, likelihoods against torch.distributions, training, resumption, bad input."""

import math

import pytest
import torch

from alignfuse.models import MVAE, train_mvae

DIMS = {"a": 5, "b": 4}
SIGMA = {"a": 0.7, "b": 1.3}
LATENT = 3


def _linear_gaussian(seed=0):
    """A linear-Gaussian MVAE ``x_m = W_m z + b_m + N(0, s_m^2)`` whose experts are the exact
    likelihood terms, so that every subset's product-of-experts posterior is exact. ``W_m``
    has orthogonal columns (``Q_m diag(d_m)``), which makes those posteriors diagonal."""
    g = torch.Generator().manual_seed(seed)
    model = MVAE(
        DIMS, {"a": "gaussian", "b": "gaussian"}, latent=LATENT, hidden=(), scale=SIGMA
    ).double()
    params = {}
    with torch.no_grad():
        for m, d in DIMS.items():
            q, _ = torch.linalg.qr(torch.randn(d, LATENT, generator=g, dtype=torch.float64))
            scale = 0.5 + torch.rand(LATENT, generator=g, dtype=torch.float64) * 2
            w, b = q * scale, torch.randn(d, generator=g, dtype=torch.float64)
            enc, dec = model.encoders[m][0], model.decoders[m][0]
            # expert: precision d^2 / s^2, mean diag(1 / d) Q^T (x - b)
            enc.weight[:LATENT] = (q / scale).T
            enc.bias[:LATENT] = -(q / scale).T @ b
            enc.weight[LATENT:] = 0
            enc.bias[LATENT:] = torch.log(SIGMA[m] ** 2 / scale**2)
            dec.weight[:], dec.bias[:] = w, b
            params[m] = (w, b)
    return model.eval(), params


def _gaussian_logpdf(x, mean, cov):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


def _marginal(params, modalities):
    w = torch.cat([params[m][0] for m in modalities])
    b = torch.cat([params[m][1] for m in modalities])
    noise = torch.cat(
        [torch.full((DIMS[m],), SIGMA[m] ** 2, dtype=torch.float64) for m in modalities]
    )
    return b, w @ w.T + torch.diag(noise)


def _rows(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g, dtype=torch.float64) * 2 for m, d in DIMS.items()}


@pytest.mark.parametrize("samples", [1, 7])
def test_iwae_is_exact_for_a_linear_gaussian_mvae(samples):
    model, params = _linear_gaussian()
    x = _rows()
    g = torch.Generator().manual_seed(0)
    for subset in (("a",), ("b",), ("a", "b")):
        mean, cov = _marginal(params, subset)
        exact = _gaussian_logpdf(torch.cat([x[m] for m in subset], 1), mean, cov)
        est = model.log_marginal({m: x[m] for m in subset}, samples=samples, generator=g)
        torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)
    model.weights = {"a": 3.0, "b": 0.5}  # training weights are not part of the density
    est = model.log_marginal(x, samples=samples, generator=g)
    torch.testing.assert_close(
        est,
        _gaussian_logpdf(torch.cat([x["a"], x["b"]], 1), *_marginal(params, ("a", "b"))),
        rtol=0,
        atol=1e-9,
    )
    # log p(a | b) = log p(a, b) - log p(b), against the Gaussian conditional
    mean, cov = _marginal(params, ("a", "b"))
    na = DIMS["a"]
    s_ab, s_bb = cov[:na, na:], cov[na:, na:]
    cond_mean = mean[:na] + (s_ab @ torch.linalg.solve(s_bb, (x["b"] - mean[na:]).T)).T
    cond_cov = cov[:na, :na] - s_ab @ torch.linalg.solve(s_bb, s_ab.T)
    exact = torch.distributions.MultivariateNormal(cond_mean, cond_cov).log_prob(x["a"])
    est = model.log_conditional({"a": x["a"]}, {"b": x["b"]}, samples=samples, generator=g)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)


def test_the_elbo_of_an_exact_posterior_is_the_log_marginal():
    model, params = _linear_gaussian()
    x1 = {m: v[:1] for m, v in _rows().items()}
    mean, cov = _marginal(params, ("a", "b"))
    exact = _gaussian_logpdf(torch.cat([x1["a"], x1["b"]], 1), mean, cov)
    # eval mode: log p(x | z = mu) - KL, in closed form
    mu, lv = model.posterior(x1)
    dec = sum(
        torch.distributions.Normal(params[m][0] @ mu[0] + params[m][1], SIGMA[m])
        .log_prob(x1[m][0])
        .sum()
        for m in DIMS
    )
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu[0], (0.5 * lv[0]).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    torch.testing.assert_close(model.elbo(x1)[0], dec - kl)
    # train mode: one reparameterised sample; its mean over many draws is log p(x)
    model.train()
    many = {m: v.expand(40_000, -1) for m, v in x1.items()}
    with torch.no_grad():
        draws = model.elbo(many, torch.Generator().manual_seed(3))
    stderr = draws.std() / math.sqrt(len(draws))
    assert abs(float(draws.mean() - exact[0])) < 4 * float(stderr)
    assert float(draws.mean()) <= float(exact[0]) + 4 * float(stderr)


def test_posterior_is_the_product_of_the_given_experts_and_the_prior():
    model = MVAE(
        {"a": 5, "b": 4, "c": 3},
        {"a": "gaussian", "b": "bernoulli", "c": "categorical"},
        latent=2,
        hidden=(8,),
    )
    x = {"a": torch.randn(4, 5), "b": torch.rand(4, 4), "c": torch.tensor([0, 2, 1, 0])}
    ex = model.experts(x)
    for subset in (("a",), ("b", "c"), ("a", "b", "c")):
        precision = 1 + sum(torch.exp(-ex[m][1]) for m in subset)
        mean = sum(ex[m][0] * torch.exp(-ex[m][1]) for m in subset) / precision
        mu, lv = model.posterior({m: x[m] for m in subset})
        torch.testing.assert_close(mu, mean)
        torch.testing.assert_close(lv, -torch.log(precision))
    # a missing modality's encoder plays no part
    before = model.posterior({"a": x["a"]})
    with torch.no_grad():
        model.encoders["b"][0].weight.add_(1.0)
    torch.testing.assert_close(model.posterior({"a": x["a"]}), before)


def test_likelihoods_match_torch_distributions():
    model = MVAE(
        {"p": 6, "g": 3, "c": 4},
        {"p": "bernoulli", "g": "gaussian", "c": "categorical"},
        scale={"g": 0.4},
    )
    out_p, out_g, out_c = torch.randn(5, 6), torch.randn(5, 3), torch.randn(5, 4)
    binary = torch.randint(0, 2, (5, 6)).float()
    grey = torch.rand(5, 6)
    labels = torch.tensor([0, 3, 1, 2, 3])
    torch.testing.assert_close(
        model.log_likelihood("p", out_p, binary),
        torch.distributions.Bernoulli(logits=out_p).log_prob(binary).sum(-1),
    )
    p = out_p.sigmoid()
    torch.testing.assert_close(
        model.log_likelihood("p", out_p, grey),
        (grey * p.log() + (1 - grey) * (1 - p).log()).sum(-1),
    )
    y = torch.randn(5, 3)
    torch.testing.assert_close(
        model.log_likelihood("g", out_g, y),
        torch.distributions.Normal(out_g, 0.4).log_prob(y).sum(-1),
    )
    torch.testing.assert_close(
        model.log_likelihood("c", out_c, labels),
        torch.distributions.Categorical(logits=out_c).log_prob(labels),
    )


def _three():
    return {"a": torch.rand(6, 5), "b": torch.randn(6, 4), "c": torch.tensor([0, 1, 2, 0, 1, 2])}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("joint", [("a", "b", "c")]),
        ("all", [("a", "b", "c"), ("a", "b"), ("a", "c"), ("b", "c"), ("a",), ("b",), ("c",)]),
        ("paper", [("a", "b", "c"), ("a",), ("b",), ("c",)]),
    ],
)
def test_subsampled_elbo_is_the_sum_of_the_subset_elbos(mode, expected):
    model = MVAE(
        {"a": 5, "b": 4, "c": 3},
        {"a": "bernoulli", "b": "gaussian", "c": "categorical"},
        latent=2,
        hidden=(8,),
        subsets=mode,
        weights={"c": 5.0},
    ).eval()
    x = _three()
    assert model.subsets_for(list(x)) == expected
    loop = -sum(model.elbo({m: x[m] for m in s}).mean() for s in expected)
    torch.testing.assert_close(model.loss(x), loop)
    # with the label weighted 5x, its log-likelihood counts 5 times in each ELBO with it
    mu, lv = model.posterior({"c": x["c"]})
    kl = 0.5 * (lv.exp() + mu.pow(2) - 1 - lv).sum(-1)
    rec = model.log_likelihood("c", model.decode(mu, ["c"])["c"], x["c"])
    torch.testing.assert_close(model.elbo({"c": x["c"]}), 5 * rec - kl)
    # fewer modalities in the batch: the subsets of those present
    assert model.subsets_for(["c"]) == [("c",)]


def test_paper_mode_adds_random_subsets():
    model = MVAE(
        {"a": 5, "b": 4, "c": 3},
        {"a": "bernoulli", "b": "gaussian", "c": "categorical"},
        latent=2,
        hidden=(8,),
        random_subsets=2,
    )
    picked = model.subsets_for(["a", "b", "c"], torch.Generator().manual_seed(0))
    assert picked[:4] == [("a", "b", "c"), ("a",), ("b",), ("c",)] and len(picked) == 6
    assert all(len(s) == 2 for s in picked[4:])


def _prototype_data(n=600, seed=0):
    """Images that are noisy copies of one of 4 prototypes; the label names it."""
    protos = (
        torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    ).float() * 0.8 + 0.1
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = (protos[labels] + 0.1 * torch.randn(n, 16, generator=g)).clamp(0, 1)
    return {"image": images, "label": labels}, protos


def test_training_learns_inference_from_either_modality():
    data, protos = _prototype_data()
    torch.manual_seed(0)
    model = MVAE(
        {"image": 16, "label": 4},
        {"image": "bernoulli", "label": "categorical"},
        latent=4,
        hidden=(32,),
        weights={"label": 10.0},  # the paper up-weights the label against the pixels
    )
    history = train_mvae(
        model, data, epochs=30, batch_size=64, lr=3e-3, anneal_epochs=5, progress=False
    )
    assert history[-1] < history[0]
    test, _ = _prototype_data(200, seed=1)
    acc = (
        (model.predict({"image": test["image"]}, "label").argmax(1) == test["label"]).float().mean()
    )
    assert acc > 0.95
    # images generated from the label alone are nearest to that label's prototype
    labels = torch.arange(4).repeat(25)
    gen = model.sample("image", {"label": labels}, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(gen, protos).argmin(1)
    assert (nearest == labels).float().mean() > 0.9
    assert model.beta == 1.0  # the annealed beta is restored
    assert model.sample("image", n=3).shape == (3, 16)


def test_training_resumes_exactly(tmp_path):
    data, _ = _prototype_data(200)

    def make():
        torch.manual_seed(0)
        return MVAE(
            {"image": 16, "label": 4},
            {"image": "bernoulli", "label": "categorical"},
            latent=3,
            hidden=(8,),
            random_subsets=1,
        )

    full = make()
    train_mvae(full, data, epochs=4, batch_size=64, anneal_epochs=3, progress=False)
    part = make()
    train_mvae(
        part,
        data,
        epochs=2,
        batch_size=64,
        anneal_epochs=3,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    resumed = make()
    history = train_mvae(
        resumed,
        data,
        epochs=4,
        batch_size=64,
        anneal_epochs=3,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert len(history) == 4
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.parametrize("aggregation", ["moe", "mopoe"])
def test_mixture_iwae_converges_to_the_linear_gaussian_marginal(aggregation):
    model, params = _linear_gaussian()
    model.aggregation = aggregation  # mixtures: proposals, no longer the exact posterior
    x = {m: v[:3] for m, v in _rows().items()}
    g = torch.Generator().manual_seed(0)
    for subset in (("a",), ("a", "b")):
        exact = _gaussian_logpdf(torch.cat([x[m] for m in subset], 1), *_marginal(params, subset))
        one = model.log_marginal({m: x[m] for m in subset}, samples=1, generator=g)
        many = model.log_marginal({m: x[m] for m in subset}, samples=100_000, generator=g)
        if aggregation == "mopoe" and len(subset) == 1:  # one component: the exact posterior
            torch.testing.assert_close(one, exact, rtol=0, atol=1e-9)
        else:
            assert (one - exact).abs().max() > 1e-3  # an inexact proposal: one draw is noisy
        torch.testing.assert_close(many, exact, rtol=0, atol=0.03)  # Monte Carlo error


def test_moe_mixture_density_and_elbo_match_their_definitions():
    lik = {"a": "gaussian", "b": "bernoulli", "c": "categorical"}
    model = MVAE({"a": 5, "b": 4, "c": 3}, lik, latent=2, hidden=(8,), aggregation="moe").eval()
    x = {"a": torch.randn(4, 5), "b": torch.rand(4, 4), "c": torch.tensor([0, 2, 1, 0])}
    comps = model.posterior_components(x)
    ex = model.experts(x)
    assert len(comps) == 3 and all(
        torch.equal(c[0], ex[m][0]) for c, m in zip(comps, "abc", strict=True)
    )
    z = torch.randn(7, 4, 2)
    mus, sds = (
        torch.stack([c[0] for c in comps], -2),
        torch.stack([(0.5 * c[1]).exp() for c in comps], -2),
    )
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(4, 3)),
        torch.distributions.Independent(torch.distributions.Normal(mus, sds), 1),
    )
    torch.testing.assert_close(model._log_q(z, comps), mixture.log_prob(z))
    # eval mode: each component at its mean, rec + log p(z) - log q(z), averaged
    want = []
    for mu, _ in comps:
        out = model.decode(mu)
        rec = sum(model.log_likelihood(m, out[m], x[m]) for m in x)
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(mu).sum(-1)
        want.append(rec + prior - mixture.log_prob(mu))
    torch.testing.assert_close(model.elbo(x), torch.stack(want).mean(0))
    with pytest.raises(ValueError, match="posterior_components"):
        model.posterior(x)
    probs = model.predict({"a": x["a"], "b": x["b"]}, "c")
    per = [
        model.decode(c[0], ["c"])["c"].softmax(-1)
        for c in model.posterior_components({"a": x["a"], "b": x["b"]})
    ]
    torch.testing.assert_close(probs, torch.stack(per).mean(0))
    assert model.sample("a", x, generator=torch.Generator().manual_seed(0)).shape == (4, 5)
    with pytest.raises(ValueError, match="aggregation"):
        MVAE({"a": 5}, {"a": "gaussian"}, aggregation="sum")


def test_mopoe_mixes_the_products_of_every_subset():
    lik = {"a": "gaussian", "b": "bernoulli", "c": "categorical"}
    torch.manual_seed(0)
    mopoe = MVAE({"a": 5, "b": 4, "c": 3}, lik, latent=2, hidden=(8,), aggregation="mopoe").eval()
    poe = MVAE({"a": 5, "b": 4, "c": 3}, lik, latent=2, hidden=(8,))
    poe.load_state_dict(mopoe.state_dict())
    x = {"a": torch.randn(4, 5), "b": torch.rand(4, 4), "c": torch.tensor([0, 2, 1, 0])}
    comps = mopoe.posterior_components(x)
    subsets = [("a", "b", "c"), ("a", "b"), ("a", "c"), ("b", "c"), ("a",), ("b",), ("c",)]
    assert len(comps) == len(subsets)
    for (mu, lv), sub in zip(comps, subsets, strict=True):
        want = poe.posterior({m: x[m] for m in sub})
        torch.testing.assert_close(mu, want[0])
        torch.testing.assert_close(lv, want[1])
    # one modality given: one component, the same model as the product of experts
    one = {"a": x["a"]}
    torch.testing.assert_close(mopoe.elbo(one), poe.eval().elbo(one))
    torch.testing.assert_close(mopoe.predict(one, "c"), poe.predict(one, "c"))


def test_class_posterior_sums_out_the_label():
    data, _ = _prototype_data(40)
    model = MVAE(
        {"image": 16, "label": 4},
        {"image": "bernoulli", "label": "categorical"},
        latent=3,
        hidden=(8,),
    ).eval()
    post = model.class_log_posterior(
        {"image": data["image"]}, "label", 5, torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(0)
    loop = torch.stack(
        [
            model.log_marginal({"image": data["image"], "label": torch.full((40,), c)}, 5, g)
            for c in range(4)
        ],
        1,
    )
    torch.testing.assert_close(post, loop - torch.logsumexp(loop, 1, keepdim=True))
    torch.testing.assert_close(post.exp().sum(1), torch.ones(40))
    with pytest.raises(ValueError, match="categorical"):
        model.class_log_posterior({"label": data["label"]}, "image")
    with pytest.raises(ValueError, match="also in given"):
        model.class_log_posterior(data, "label")


def test_bad_input_is_named():
    lik = {"image": "bernoulli", "label": "categorical"}
    model = MVAE({"image": 4, "label": 3}, lik, latent=2, hidden=(4,))
    ok = {"image": torch.rand(2, 4), "label": torch.tensor([0, 2])}
    cases = [
        ({"imagez": ok["image"]}, "imagez"),
        ({"image": torch.rand(2, 5)}, r"shape \(B, 4\)"),
        ({"image": torch.full((2, 4), float("nan"))}, "NaN"),
        ({"image": torch.full((2, 4), 2.0)}, r"\[0, 1\]"),
        ({"label": torch.tensor([0, 3])}, r"outside \[0, 3\)"),
        ({"label": torch.tensor([0.0, 1.0])}, "integer"),
        ({"image": torch.rand(0, 4)}, "empty"),
        ({"image": ok["image"], "label": torch.tensor([0])}, "different batch sizes"),
        ({}, "non-empty"),
    ]
    for batch, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model.loss(batch)
    with pytest.raises(ValueError, match="target 'text'"):
        model.predict({"image": ok["image"]}, "text")
    with pytest.raises(ValueError, match="share modalities"):
        model.log_conditional({"label": ok["label"]}, ok)
    with pytest.raises(ValueError, match="samples"):
        model.log_marginal(ok, samples=0)
    with pytest.raises(ValueError, match="chunk"):
        model.log_marginal(ok, chunk=0)
    for kwargs, msg in [
        ({"likelihoods": {"image": "poisson", "label": "categorical"}}, "poisson"),
        ({"likelihoods": {"image": "bernoulli"}}, "likelihoods must name"),
        ({"subsets": "some"}, "subsets"),
        ({"scale": {"text": 1.0}}, "scale names 'text'"),
        ({"weights": {"label": 0.0}}, "positive"),
    ]:
        with pytest.raises(ValueError, match=msg):
            MVAE({"image": 4, "label": 3}, **{"likelihoods": lik, **kwargs})
    with pytest.raises(ValueError, match="anneal_epochs"):
        train_mvae(model, ok, epochs=1, anneal_epochs=-1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        train_mvae(model, ok, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_mvae(model, ok, epochs=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.sample("image", n=0)
