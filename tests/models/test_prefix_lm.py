"""The LLaVA-style captioner: teacher forcing layout, a causal model whose likelihood and
greedy captions equal step-by-step loops, training and exact resume through the Trainer,
and the generative evaluation (captioning metrics, likelihood matching)."""

import itertools

import numpy as np
import pytest
import torch

from alignfuse.config import load_config
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine import Trainer, load_data
from alignfuse.engine.evaluate import (
    caption_likelihoods,
    evaluate,
    evaluate_split,
    evaluate_winoground,
    generate_captions,
    images_to_tensor,
)
from alignfuse.metrics import bleu, cider, winoground_scores
from alignfuse.models import build_prefix_lm
from alignfuse.models.prefix_lm import IGNORE
from helpers import assert_resumes_exactly, quiet_trainer

LM_OVERRIDES = [
    "model.name=prefix_lm",
    "model.args={image_args: {width: 4, out_dim: 16}, width: 16, heads: 2, max_len: 24}",
]
CAPTIONS = ["a red circle above a blue square", "two green stars", "one small cross"]


def _trainer(tmp_path, tiny, extra=(), name="lm"):
    return quiet_trainer(tmp_path, [*tiny, *LM_OVERRIDES, *extra], name)


def _model(**kw):
    torch.manual_seed(0)
    tok = Tokenizer.build(CAPTIONS)
    args = {"width": 16, "heads": 2, "image_args": {"width": 4, "out_dim": 16}, **kw}
    return tok, build_prefix_lm(tok, **args).eval()


def test_teacher_forcing_shifts_by_one_and_ends_each_caption():
    _, model = _model()
    prep = model.prepare_text(["two green stars", "one small cross", "two stars"])
    inputs, targets = model.teacher_forcing(prep)
    ids = prep["ids"]
    assert inputs[:, 0].eq(model.bos).all() and torch.equal(inputs[:, 1:], ids)
    assert targets[0].tolist() == [*ids[0].tolist(), model.eos]
    assert targets[2].tolist() == [*ids[2, :2].tolist(), model.eos, IGNORE]


def test_the_language_model_is_causal_and_sees_the_image():
    _, model = _model()
    prefix = model.prefix(torch.rand(2, 3, 64, 64))
    inputs = torch.tensor([[model.bos, 2, 3, 4, 5], [model.bos, 2, 3, 4, 5]])
    changed = inputs.clone()
    changed[:, 3:] = 6
    with torch.no_grad():
        a, b = model.logits(prefix, inputs), model.logits(prefix, changed)
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(
            a[:, 3], b[:, 3]
        )
        assert not torch.allclose(a[0], a[1])  # two images, two next-word distributions


def test_likelihood_and_greedy_captions_equal_step_by_step_loops():
    tok, model = _model()
    images = torch.rand(3, 3, 64, 64)
    prep = model.prepare_text(CAPTIONS)
    with torch.no_grad():
        prefix = model.prefix(images)
        got = model.log_likelihood(prefix, prep)
        for j, text in enumerate(CAPTIONS):
            seq, total = [model.bos], 0.0
            for w in [*tok.encode(text), model.eos]:  # one position at a time
                logp = model.logits(prefix[j : j + 1], torch.tensor([seq])).log_softmax(-1)
                total += float(logp[0, -1, w])
                seq.append(w)
            assert float(got[j]) == pytest.approx(total / (len(seq) - 1), abs=1e-5)
        captions = model.generate(images, max_len=6)
        for j in range(3):  # each image alone, argmax over the allowed tokens
            seq = [model.bos]
            for _ in range(6):
                logits = model.logits(prefix[j : j + 1], torch.tensor([seq]))[0, -1]
                logits[[0, 1, model.bos]] = float("-inf")
                nxt = int(logits.argmax())
                if nxt == model.eos:
                    break
                seq.append(nxt)
            assert captions[j] == tok.decode(seq[1:])


def test_the_key_value_cache_gives_the_full_models_logits_at_every_step():
    """Decoding with the cache (the prefix and begin token at once, then one token a step)
    equals re-running the model on the whole sequence, in float64 to 1e-10; and cached and
    uncached greedy captions are the same."""
    _, model = _model(depth=3)
    model = model.double()
    images = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    seq = torch.tensor([[model.bos, 2, 5, 3, 4, 7]] * 4)
    with torch.no_grad():
        prefix = model.prefix(images)
        full = model.logits(prefix, seq)
        caches: list[list[torch.Tensor]] = [[] for _ in model.decoder.layers]
        p = prefix.shape[1]
        new = torch.cat([prefix, model.embed(seq[:, :1])], 1) + model.pos[:, : p + 1]
        for t in range(seq.shape[1]):
            step = model._step_logits(new, caches)
            assert torch.allclose(step, full[:, t], atol=1e-10, rtol=0)
            assert caches[0][0].shape == (4, 2, p + t + 1, 8)
            if t + 1 < seq.shape[1]:
                new = model.embed(seq[:, t + 1 : t + 2]) + model.pos[:, p + t + 1 : p + t + 2]
        assert model.generate(images, max_len=8) == model.generate(
            images, max_len=8, use_cache=False
        )


def test_a_captioner_learns_to_say_what_it_sees():
    """Overfitting two images with two captions: greedy decoding must give them back."""
    _, model = _model(depth=1)
    model.train()
    images = torch.zeros(2, 3, 64, 64)
    images[1] += 1.0
    batch = {"images": images, "text": model.prepare_text(CAPTIONS[:2])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        out = model.training_loss(batch)
        out.loss.backward()
        opt.step()
    assert out.logs["token_acc"] == 1.0
    assert model.eval().generate(images) == CAPTIONS[:2]
    assert model.generate(images, beam_size=3) == CAPTIONS[:2]


def test_beam_search_finds_the_likely_caption_that_greedy_decoding_misses():
    """One image, five captions: "a ..." starts 3 of them but each ending has probability
    1/3, while "b c" is 2 of 5. Greedy decoding takes "a" (0.6) and ends at a caption of
    probability 0.2; a beam of 2 finds "b c" (0.4)."""
    tok = Tokenizer.build(["a b c"])
    torch.manual_seed(0)
    model = build_prefix_lm(
        tok, width=32, heads=2, max_len=4, image_args={"width": 4, "out_dim": 16}
    )
    captions = ["a a", "a b", "a c", "b c", "b c"]
    batch = {"images": torch.zeros(5, 3, 64, 64), "text": model.prepare_text(captions)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        model.training_loss(batch).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logp = model.log_likelihood(model.prefix(batch["images"]), batch["text"]).exp() ** 3
    assert logp.tolist() == pytest.approx([0.2] * 3 + [0.4] * 2, abs=0.02)
    image = batch["images"][:1]
    assert model.generate(image)[0].startswith("a ")
    assert model.generate(image, beam_size=2) == ["b c"]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_best_caption_of_an_exhaustive_search(alpha):
    """Three words and the end token, at most 3 words: 40 possible captions. A beam of 40
    keeps every hypothesis alive, so beam search must return the caption whose summed
    log-probability (teacher forcing on the whole sequence) over ``len ** alpha`` is
    highest; in float64, for each of three images decoded in one batch."""
    torch.manual_seed(1)
    tok = Tokenizer.build(["a b c"])
    model = build_prefix_lm(
        tok,
        width=16,
        heads=2,
        max_len=3,
        length_penalty=alpha,
        image_args={"width": 4, "out_dim": 16},
    )
    model = model.eval().double()
    images = torch.rand(3, 3, 64, 64, dtype=torch.float64)
    words = [tok.encode(w)[0] for w in "abc"]
    hyps = [([*c], True) for m in range(3) for c in itertools.product(words, repeat=m)]
    hyps += [([*c], False) for c in itertools.product(words, repeat=3)]
    assert len(hyps) == 40
    with torch.no_grad():
        prefix = model.prefix(images)
        best = []
        for j in range(3):
            ranked = []
            for ids, ends in hyps:
                targets = [*ids, model.eos] if ends else ids
                inputs = torch.tensor([[model.bos, *ids]])[:, : len(targets)]
                logits = model.logits(prefix[j : j + 1], inputs)[0]
                logp = model._allowed_log_probs(logits)
                total = float(logp[torch.arange(len(targets)), targets].sum())
                ranked.append((total / len(targets) ** alpha, ids))
            best.append(tok.decode(max(ranked)[1]))
        assert model.generate(images, beam_size=40) == best
        assert model.generate(images, beam_size=1) == model.generate(images)


def test_trainer_trains_the_captioner_resumes_exactly_and_evaluates(tmp_path, tiny_overrides):
    full = _trainer(tmp_path, tiny_overrides, name="full")
    hist = full.fit()
    assert hist.train[-1]["lm"] < hist.train[0]["lm"] and "cider" in hist.val[0]
    assert_resumes_exactly(full, lambda: _trainer(tmp_path, tiny_overrides, name="part"))
    test = full.data["test"]
    res = evaluate_split(full.model, test, batch_size=5)
    captions = res.pop("_captions")
    assert "rsum" not in res and "_sims" not in res
    assert captions == generate_captions(full.model.eval(), test.images, batch_size=5)
    assert res["cider"] == pytest.approx(cider(captions, test.captions))
    assert res["bleu_4"] == pytest.approx(bleu(captions, test.captions)["bleu_4"])
    negs = test.extras["negatives"]
    pos = caption_likelihoods(
        full.model, test.images, [test.captions[i][n["positive"]] for i, n in enumerate(negs)]
    )
    neg = caption_likelihoods(full.model, test.images, [n["caption"] for n in negs])
    assert res["hard_negative_acc"] == pytest.approx(float((pos > neg).double().mean()))
    metrics, sims = evaluate(full.model, full.data, ["test"])
    assert sims == {} and "test/cider" in metrics and "winoground/wino_group" in metrics


def test_winoground_of_a_captioner_is_the_likelihood_of_each_pair(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    model, wino = tr.model.eval(), tr.data.winoground
    scores = np.zeros((len(wino), 2, 2))
    with torch.no_grad():
        for g in range(len(wino)):
            prefix = model.prefix(images_to_tensor(wino.images[g]))
            for c in range(2):
                prep = model.prepare_text([wino.captions[g][c]] * 2)
                scores[g, c] = model.log_likelihood(prefix, prep).numpy()
    assert evaluate_winoground(model, tr.data) == pytest.approx(winoground_scores(scores))


def test_captioner_rejects_bad_input():
    tok, model = _model(max_len=4)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_prefix_lm(tok, width=30, heads=4)
    with pytest.raises(ValueError, match="depth"):
        build_prefix_lm(tok, depth=0)
    with pytest.raises(ValueError, match="tokenizer"):
        build_prefix_lm(None)
    prefix = model.prefix(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="max_len"):
        model.logits(prefix, torch.full((2, 6), model.bos))
    with pytest.raises(ValueError, match="rows"):
        model.logits(prefix[:1], torch.full((2, 2), model.bos))
    with pytest.raises(ValueError, match="max_len must be"):
        model.generate(torch.rand(1, 3, 64, 64), max_len=0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="beam_size must be a positive integer"):
            model.generate(torch.rand(1, 3, 64, 64), beam_size=bad)
    with pytest.raises(ValueError, match="use_cache"):
        model.generate(torch.rand(1, 3, 64, 64), beam_size=2, use_cache=False)
    with pytest.raises(ValueError, match="beam_size"):
        build_prefix_lm(tok, beam_size=0)
    _, small = _model(max_regions=8)
    with pytest.raises(ValueError, match="max_regions"):
        small.prefix(torch.rand(1, 3, 64, 64))
    images = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="disagree"):
        caption_likelihoods(model, images, ["a", "b", "c"])


def test_retrieval_captioning_takes_each_images_most_similar_training_caption(
    tmp_path, tiny_overrides
):
    from alignfuse.engine.evaluate import embed_images, embed_texts, retrieval_captions

    cfg = load_config(None, [*tiny_overrides, "name=clip"])
    tr = Trainer(cfg, load_data(cfg), tmp_path / "clip", progress=False, log=lambda m: None)
    model, test = tr.model.eval(), tr.data["test"]
    pool = tr.data.train_texts
    got = retrieval_captions(model, test.images, pool, batch_size=7)
    img, txt = embed_images(model, test.images), embed_texts(model, pool)
    for i in range(len(test)):  # the best over the whole pool (duplicates score the same)
        best = max(range(len(pool)), key=lambda j: float(img[i] @ txt[j]))
        assert float(img[i] @ txt[pool.index(got[i])]) == pytest.approx(
            float(img[i] @ txt[best]), abs=1e-6
        )
    metrics, _ = evaluate(model, tr.data, ["test"], retrieval_captioning=True)
    assert metrics["test/cider"] == pytest.approx(cider(got, test.captions))
    assert "test/rsum" in metrics  # retrieval metrics as before
    with pytest.raises(ValueError, match="pool"):
        retrieval_captions(model, test.images, [])
