"""ALBEF as a trainable model: BERT masking, one-pass features equal to the towers', a fusion
that ignores padding and other rows, an objective that is the sum of its parts, hard
negatives that are never positives, and the two-stage re-ranking equal to a loop."""

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.image import SmallCNN, TinyViT
from alignfuse.encoders.text import BiGRUTextEncoder, TransformerTextEncoder
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.evaluate import (
    evaluate_split,
    evaluate_winoground,
    rerank,
    two_stage_images,
    two_stage_metrics,
    two_stage_texts,
)
from alignfuse.errors import ConfigError
from alignfuse.losses import InfoNCELoss
from alignfuse.losses.matching import matching, sample_hard_negatives
from alignfuse.metrics import retrieval_map, retrieval_metrics, winoground_scores
from alignfuse.models import build_albef, mask_words
from alignfuse.models.albef import MASK_ID, FusionLayer, MergedLayer
from helpers import assert_resumes_exactly, quiet_trainer, two_stage_winoground_loop

ALBEF_OVERRIDES = [
    "model.name=albef",
    "model.args={image_args: {width: 4, out_dim: 16}, text_args: {word_dim: 8, hidden: 8}, "
    "width: 16, heads: 2, rerank_k: 4}",
]


def _trainer(tmp_path, tiny, extra=(), name="albef"):
    return quiet_trainer(tmp_path, [*tiny, *ALBEF_OVERRIDES, *extra], name)


def _tiny_model(**kw):
    tok = Tokenizer.build(["a red circle above a blue square", "two green stars", "one cross"])
    model = build_albef(
        tok, embed_dim=16, width=16, heads=2, image_args={"width": 4, "out_dim": 16}, **kw
    )
    return tok, model.eval()


def _seeded_loss(model, texts, seed):
    """A batch of random images with ``texts``, and the model's training loss on it drawn
    after ``torch.manual_seed(seed)`` (so a test can redo the draws by hand)."""
    model.train()
    batch = {"images": torch.rand(len(texts), 3, 64, 64), "text": model.prepare_text(texts)}
    loss = InfoNCELoss()
    torch.manual_seed(seed)
    return batch, loss, model.training_loss(batch, loss)


def test_mask_words_follows_bert_masking():
    g = torch.Generator().manual_seed(0)
    b, length, vocab = 4000, 12, 50
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    ids = torch.randint(2, vocab, (b, length), generator=g)
    valid = torch.arange(length)[None, :] < lengths[:, None]
    ids[~valid] = 0
    masked, chosen = mask_words(ids, lengths, vocab, 0.15, generator=g)
    assert not (chosen & ~valid).any() and chosen.any(1).all()  # valid words, >= 1 each
    assert torch.equal(masked[~chosen], ids[~chosen])  # padding and unchosen words kept
    # ~15% of the words (plus the forced one where none was drawn); binomial tolerance
    n_valid = int(valid.sum())
    # expected count: each word with 0.15, plus one forced where a caption drew none
    expect = 0.15 * n_valid + float(((1 - 0.15) ** lengths.double()).sum())
    assert abs(int(chosen.sum()) - expect) < 5 * np.sqrt(expect)
    c = int(chosen.sum())
    as_mask = int((masked[chosen] == MASK_ID).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    assert abs(as_mask / c - 0.8) < 0.02
    # kept: the 10% left alone plus random draws that hit the same word (1 in 48)
    assert abs(kept / c - (0.1 + 0.1 / (vocab - 2))) < 0.015
    assert (masked[chosen] >= 1).all() and (masked[chosen] < vocab).all()
    _, chosen2 = mask_words(ids, lengths, vocab, 0.15, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(chosen2, chosen)
    with pytest.raises(ValueError, match="probability"):
        mask_words(ids, lengths, vocab, 0.0)
    with pytest.raises(ValueError, match="lengths must have shape"):
        mask_words(ids, lengths[:5], vocab)
    with pytest.raises(ValueError, match="integer word ids"):
        mask_words(ids.float(), lengths, vocab)


@pytest.mark.parametrize(
    "make",
    [
        lambda tok: SmallCNN(4, 16),
        lambda tok: TinyViT(image_size=32, patch=8, dim=16, depth=1, heads=2, out_dim=16),
        lambda tok: BiGRUTextEncoder(tok, 8, 8),
        lambda tok: TransformerTextEncoder(tok, 16, 1, 2),
    ],
)
def test_encode_is_forward_and_tokens_in_one_pass(make):
    tok = Tokenizer.build(["a red circle", "two blue squares above a star"])
    enc = make(tok).eval()
    with torch.no_grad():
        if getattr(enc, "modality", "") == "image":
            x = (torch.rand(3, 3, 32, 32),)
        else:
            prep = tok.batch(["a red circle", "two blue squares above a star", "star"])
            x = (prep["ids"], prep["lengths"])
        glob, tokens = enc.encode(*x)
        assert torch.allclose(glob, enc(*x), atol=1e-6)
        assert torch.allclose(tokens, enc.tokens(*x), atol=1e-6)


@pytest.mark.parametrize("fusion", ["cross", "merged"])
def test_fusion_ignores_padding_and_the_other_rows(fusion):
    _, model = _tiny_model(fusion=fusion)
    texts = ["a red circle above a blue square", "one cross"]
    with torch.no_grad():
        _, regions = model.image_features(torch.rand(2, 3, 64, 64))
        _, words, mask = model.text_features(model.prepare_text(texts))
        both = model.match_logits(regions, words, mask)
        for i in range(2):  # alone, unpadded
            n = int(mask[i].sum())
            one = model.match_logits(regions[i : i + 1], words[i : i + 1, :n], mask[i : i + 1, :n])
            assert torch.allclose(one, both[i : i + 1], atol=1e-5)
        # extra padding changes nothing
        pad_w, pad_m = F.pad(words, (0, 0, 0, 3), value=7.0), F.pad(mask, (0, 3))
        assert torch.allclose(model.match_logits(regions, pad_w, pad_m), both, atol=1e-5)
        with pytest.raises(ValueError, match="paired rows"):
            model.fuse(regions[:1], words, mask)
        with pytest.raises(ValueError, match="region_index"):
            model.fuse(regions, words, mask, torch.tensor([0, 2]))


def test_fusion_layer_equals_torch_attention_and_shares_keys_per_image():
    torch.manual_seed(0)
    layer = FusionLayer(16, 4).eval()
    x, regions = torch.randn(5, 7, 16), torch.randn(3, 9, 16)
    x_mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1, 7])[:, None]
    index = torch.tensor([2, 0, 2, 1, 0])
    # the reference: torch's MultiheadAttention with the same weights, on gathered regions
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key_value.weight]))
        ref.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key_value.bias]))
        ref.out_proj.load_state_dict(layer.out.state_dict())
        h = layer.norms[0](x + layer.self_att(x, x, x, key_padding_mask=~x_mask)[0])
        r = regions[index]
        h = layer.norms[1](h + ref(h, r, r, need_weights=False)[0])
        want = layer.norms[2](h + layer.ffn(h))
        got = layer(x, x_mask, regions, index)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(layer(x, x_mask, regions[index]), got, atol=1e-6)


def test_merged_layer_equals_a_post_norm_transformer_layer():
    torch.manual_seed(0)
    layer = MergedLayer(16, 4).eval()
    ref = nn.TransformerEncoderLayer(16, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
    with torch.no_grad():
        ref.self_attn.load_state_dict(layer.att.state_dict())
        ref.linear1.load_state_dict(layer.ffn[0].state_dict())
        ref.linear2.load_state_dict(layer.ffn[2].state_dict())
        ref.norm1.load_state_dict(layer.norms[0].state_dict())
        ref.norm2.load_state_dict(layer.norms[1].state_dict())
        x = torch.randn(3, 9, 16)
        mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 6])[:, None]
        want = ref.eval()(x, src_key_padding_mask=~mask)
        assert torch.allclose(layer(x, mask)[mask], want[mask], atol=1e-5)


def test_merged_fusion_reads_the_regions_and_keeps_the_word_positions():
    """Merged attention: the [CLS] and word states (not the regions') come back, they change
    with the image, and ``region_index`` equals passing the gathered regions."""
    _, model = _tiny_model(fusion="merged")
    with torch.no_grad():
        _, regions = model.image_features(torch.rand(3, 3, 64, 64))
        _, words, mask = model.text_features(model.prepare_text(["a red circle", "one cross"]))
        index = torch.tensor([2, 0])
        out = model.fuse(regions, words, mask, index)
        assert out.shape == (2, 1 + words.shape[1], 16)
        assert torch.allclose(out, model.fuse(regions[index], words, mask), atol=1e-6)
        other = model.fuse(regions, words, mask, torch.tensor([1, 1]))
        assert not torch.allclose(out[:, 0], other[:, 0], atol=1e-4)
    assert isinstance(model.layers[0], MergedLayer) and model.type_emb is not None


@pytest.mark.parametrize("fusion", ["cross", "merged"])
def test_objective_is_itc_plus_itm_plus_mlm(fusion):
    tok, model = _tiny_model(fusion=fusion)
    texts = ["a red circle above a blue square", "two green stars", "one cross", "two green stars"]
    batch, loss, out = _seeded_loss(model, texts, 3)
    # the same parts, assembled by hand from the public pieces with the same draws
    torch.manual_seed(3)
    img, regions = model.image_features(batch["images"])
    txt, words, wmask = model.text_features(batch["text"])
    itc = loss(img, txt).loss
    assert torch.allclose(img, model.encode_image(batch["images"]), atol=1e-6)
    assert torch.allclose(txt, model.encode_text(batch["text"]), atol=1e-6)
    positives = torch.eye(4, dtype=torch.bool)
    positives[1, 3] = positives[3, 1] = True  # identical captions are never negatives
    sims = (img @ txt.T).detach() / 0.07
    itm, _, _ = matching(  # on gathered rows, the other way round from the model's indices
        lambda r, i: model.match_logits(r, words[i], wmask[i]),
        regions,
        torch.arange(4),
        sims,
        positive_mask=positives,
    )
    ids, lengths = batch["text"]["ids"], batch["text"]["lengths"]
    masked, chosen = mask_words(ids, lengths, len(tok))
    states = model.fuse(regions, model.word_fuse(model.text_encoder.tokens(masked, lengths)), wmask)
    mlm = F.cross_entropy(model.mlm_head(states[:, 1:][chosen]), ids[chosen])
    assert torch.allclose(out.loss, itc + itm + mlm, atol=1e-5)
    assert out.logs["itc"] == pytest.approx(float(itc.detach()), abs=1e-5)
    assert out.logs["mlm"] == pytest.approx(float(mlm.detach()), abs=1e-5)
    # switched-off parts leave the contrastive loss alone
    _, only_itc = _tiny_model(itm_weight=0.0, mlm_weight=0.0)
    assert only_itc.mlm_head is None
    part = only_itc.training_loss(batch, loss)
    assert set(part.logs) == {"temperature", "itc"}


def test_hard_negatives_are_never_positives_and_follow_the_similarity():
    g = torch.Generator().manual_seed(0)
    sims = torch.tensor(
        [[0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
    )
    pos = torch.eye(4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    counts = torch.zeros(4, 4)
    for _ in range(4000):
        neg_b, _ = sample_hard_negatives(sims, pos, g)
        counts[torch.arange(4), neg_b] += 1
    assert (counts[pos] == 0).all()
    # row 0 draws among captions 2, 3 with odds e^1 : e^0
    p = counts[0, 2] / counts[0].sum()
    assert abs(float(p) - np.e / (np.e + 1)) < 0.03


@pytest.mark.parametrize("fusion", ["cross", "merged"])
def test_rerank_equals_a_loop_over_queries(fusion):
    _, model = _tiny_model(rerank_k=3, fusion=fusion)
    texts = [
        "a red circle",
        "two green stars",
        "one cross",
        "a blue square",
        "two stars",
        "a circle",
        "cross",
    ]
    images = (np.random.default_rng(0).random((5, 64, 64, 3)) * 255).astype(np.uint8)
    img, regions = two_stage_images(model, images, batch_size=2)
    txt, words, wmask = two_stage_texts(model, texts, batch_size=3)
    sims = img @ txt.T
    i2t, t2i = rerank(model, sims, regions, words, wmask, k=3, batch_size=4)

    def score(i, c):
        n = int(wmask[c].sum())
        with torch.no_grad():
            m = model.match_scores(regions[i : i + 1], words[c : c + 1, :n], wmask[c : c + 1, :n])
        return float(m) + float(sims[i, c])

    for i in range(5):  # image to text: top 3 re-scored first, then the rest by similarity
        top = sims[i].argsort(descending=True).tolist()
        want = sorted(top[:3], key=lambda c: -score(i, c)) + top[3:]
        assert i2t[i].argsort(descending=True).tolist() == want
        for c in top[:3]:
            assert float(i2t[i, c]) == pytest.approx(score(i, c), abs=1e-5)
    for c in range(len(texts)):
        top = sims[:, c].argsort(descending=True).tolist()
        want = sorted(top[:3], key=lambda i: -score(i, c)) + top[3:]
        assert t2i[:, c].argsort(descending=True).tolist() == want
    with pytest.raises(ValueError, match="k must be"):
        rerank(model, sims, regions, words, wmask, k=0)
    with pytest.raises(ValueError, match="n_images, n_texts"):
        rerank(model, sims.T, regions, words, wmask, k=3)
    # metrics read each direction from its own matrix
    owner = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    same = two_stage_metrics(sims, sims, owner)
    assert same == pytest.approx({**retrieval_metrics(sims, owner), **retrieval_map(sims, owner)})
    m = two_stage_metrics(i2t, t2i, owner)
    assert m["i2t_r1"] == retrieval_metrics(i2t, owner)["i2t_r1"]
    assert m["t2i_r1"] == retrieval_metrics(t2i, owner)["t2i_r1"]


@pytest.mark.parametrize("fusion", ["cross", "merged"])
def test_trainer_trains_albef_resumes_exactly_and_evaluates_two_stage(
    tmp_path, tiny_overrides, fusion
):
    extra = [f"model.args.fusion={fusion}"]
    full = _trainer(tmp_path, tiny_overrides, extra, name="full")
    hist = full.fit()
    assert {"itc", "itm", "mlm", "itm_acc"} <= hist.train[0].keys()
    assert hist.train[-1]["loss"] < hist.train[0]["loss"] and hist.val
    # the negatives and the masks come from the checkpointed RNG
    assert_resumes_exactly(full, lambda: _trainer(tmp_path, tiny_overrides, extra, name="part"))
    test = full.data["test"]
    res = evaluate_split(full.model, test)
    res.pop("_sims")
    assert {
        "rsum",
        "itc_rsum",
        "i2t_map",
        "itc_t2i_map",
        "modality_gap",
        "hard_negative_acc",
    } <= res.keys()
    assert res["rerank_k"] == 4  # the configured k, which the report's table shows
    # the hard-negative score is the re-ranking score of the two pairs
    model = full.model.eval()
    img, regions = two_stage_images(model, test.images)
    negs = test.extras["negatives"]
    with torch.no_grad():
        pos_txt = [test.captions[i][n["positive"]] for i, n in enumerate(negs)]
        p_emb, p_w, p_m = model.text_features(model.prepare_text(pos_txt))
        n_emb, n_w, n_m = model.text_features(model.prepare_text([n["caption"] for n in negs]))
        pos = model.match_scores(regions, p_w, p_m) + (img * p_emb).sum(1)
        neg = model.match_scores(regions, n_w, n_m) + (img * n_emb).sum(1)
    assert res["hard_negative_acc"] == pytest.approx(float((pos > neg).double().mean()))


def test_winoground_of_a_two_stage_model_equals_a_loop_over_groups(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    model, wino = tr.model.eval(), tr.data.winoground
    scores = two_stage_winoground_loop(model, wino, lambda img, txt: img @ txt)
    assert evaluate_winoground(model, tr.data) == pytest.approx(winoground_scores(scores))


def test_albef_rejects_what_it_cannot_train(tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match="GradCache"):
        _trainer(tmp_path, tiny_overrides, ["train.grad_cache_chunk=4"])
    with pytest.raises(ConfigError, match="no argument 'widht'; did you mean 'width'"):
        _trainer(tmp_path, tiny_overrides, ["model.args={widht: 16}"])
    with pytest.raises(ValueError, match="word features"):
        _trainer(tmp_path, tiny_overrides, ["model.text_encoder=minilm"])
    with pytest.raises(ValueError, match="multiple of heads"):
        build_albef(Tokenizer.build(["a b"]), width=30, heads=4)
    for bad in (
        {"mlm_probability": 0.0},
        {"itm_weight": -1.0},
        {"rerank_k": 0},
        {"depth": 0},
        {"momentum": 1.0},
        {"queue_size": 8},
        {"distill_alpha": 1.5},
        {"fusion": "co_attention"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_albef(Tokenizer.build(["a b"]), **bad)
    _, model = _tiny_model(max_regions=4)
    with pytest.raises(ValueError, match="max_regions"):
        model.image_features(torch.rand(1, 3, 64, 64))


def test_momentum_teacher_is_an_ema_and_the_queue_is_fifo():
    _, model = _tiny_model(momentum=0.9, queue_size=6)
    model.train()
    teacher = model.momentum_model
    own = {n: p for n, p in model.named_parameters() if not n.startswith("momentum_model.")}
    assert all(torch.equal(p, own[n]) for n, p in teacher.named_parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():  # move the student away from its teacher
        for p in own.values():
            p.add_(0.1)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    texts = ["a red circle above a blue square", "two green stars", "one cross", "two stars"]
    batch = {"images": torch.rand(4, 3, 64, 64), "text": model.prepare_text(texts)}
    model.training_loss(batch, InfoNCELoss())
    for n, p in teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * own[n], atol=1e-6), n
    with torch.no_grad():
        img_m = teacher.image_features(batch["images"])[0]
    assert (
        torch.allclose(model.image_queue[:, :4], img_m.T, atol=1e-6) and int(model.queue_ptr) == 4
    )
    model.training_loss(batch, InfoNCELoss())  # 4 more: columns 4, 5, then 0, 1
    assert int(model.queue_ptr) == 2
    assert "momentum_model.image_proj.weight" in model.state_dict()  # checkpointed


def test_distilled_contrastive_loss_equals_its_formula():
    _, model = _tiny_model(momentum=0.5, queue_size=3, distill_alpha=0.3)
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 16), dim=1), F.normalize(torch.randn(4, 16), dim=1)
    img_m, txt_m = F.normalize(torch.randn(4, 16), dim=1), F.normalize(torch.randn(4, 16), dim=1)
    loss = InfoNCELoss()
    scale = float(loss.logit_scale.detach().exp())
    iq, tq = model.image_queue.clone(), model.text_queue.clone()
    got = model._distilled_itc(img, txt, img_m, txt_m, loss).loss
    keys_t, keys_i = torch.cat([txt_m, tq.T]), torch.cat([img_m, iq.T])
    total = 0.0
    for i in range(4):  # one row at a time: soft targets from the teacher, one-hot on the pair
        for q, keys, q_m in ((img[i], keys_t, img_m[i]), (txt[i], keys_i, txt_m[i])):
            onehot = torch.zeros(7)
            onehot[i] = 1.0
            target = 0.3 * torch.softmax(q_m @ keys.T * scale, 0) + 0.7 * onehot
            total += float(-(target * torch.log_softmax(q @ keys.T * scale, 0)).sum())
    assert float(got.detach()) == pytest.approx(total / 8, abs=1e-5)
    # without distillation and without a queue it is InfoNCE against the teacher's features
    _, plain = _tiny_model(momentum=0.5, distill_alpha=0.0)
    want = (
        F.cross_entropy(img @ txt_m.T * scale, torch.arange(4))
        + F.cross_entropy(txt @ img_m.T * scale, torch.arange(4))
    ) / 2
    assert float(plain._distilled_itc(img, txt, img_m, txt_m, loss).loss.detach()) == pytest.approx(
        float(want), abs=1e-5
    )


def test_trainer_resumes_albef_with_its_teacher_and_queue_exactly(tmp_path, tiny_overrides):
    extra = [
        "model.args={image_args: {width: 4, out_dim: 16}, text_args: {word_dim: 8, hidden: 8}, "
        "width: 16, heads: 2, rerank_k: 4, momentum: 0.9, queue_size: 40}"
    ]
    full = _trainer(tmp_path, tiny_overrides, extra, name="full")
    full.fit()
    assert_resumes_exactly(full, lambda: _trainer(tmp_path, tiny_overrides, extra, name="part"))
    with pytest.raises(ValueError, match="logit_scale"):
        _trainer(tmp_path, tiny_overrides, [*extra, "loss.name=triplet"], name="t").fit()


def test_wra_is_exact_ot_between_the_fused_words_and_regions_of_the_itm_pairs():
    _, model = _tiny_model(fusion="merged", mlm_weight=0.0, wra_weight=0.5)
    texts = ["a red circle above a blue square", "two green stars", "one cross", "one cross"]
    batch, loss, out = _seeded_loss(model, texts, 5)
    assert set(out.logs) >= {"itc", "itm", "wra"}
    # by hand, with the same draws: the ITM pairs' fused states, exact OT by POT's emd2
    torch.manual_seed(5)
    img, regions = model.image_features(batch["images"])
    txt, words, wmask = model.text_features(batch["text"])
    itc = loss(img, txt).loss
    positives = torch.eye(4, dtype=torch.bool)
    positives[2, 3] = positives[3, 2] = True
    sims = (img @ txt.T).detach() / 0.07
    pairs = []

    def head(r, i):
        states = model.fuse(r, words[i], wmask[i], all_states=True)
        pairs.append((states, wmask[i]))
        return model.itm_head(states[:, 0])

    itm, _, targets = matching(head, regions, torch.arange(4), sims, positive_mask=positives)
    states, masks = pairs[0]
    length = words.shape[1]
    dist = []
    for s, m in zip(states.detach().double(), masks, strict=True):
        w, r = s[1 : 1 + length][m], s[1 + length :]
        cost = 1 - F.normalize(w, dim=-1) @ F.normalize(r, dim=-1).T
        uniform = [torch.full((len(v),), 1 / len(v), dtype=torch.float64) for v in (w, r)]
        dist.append(float(ot.emd2(*[u.numpy() for u in uniform], cost.numpy())))
    dist = torch.tensor(dist)
    sign = torch.where(targets == 1, 1.0, -1.0).double()
    wra = float((sign * dist).sum() / len(dist))
    assert targets.sum() == 4 and len(targets) == 12  # every positive, two negatives each
    assert out.logs["wra"] == pytest.approx(wra, abs=1e-3)  # IPOT (50 steps) against exact OT
    total = float((itc + itm).detach()) + 0.5 * out.logs["wra"]
    assert float(out.loss.detach()) == pytest.approx(total, abs=1e-5)
    # the loss reaches the fusion through the transport cost (the plan is constant)
    _, wra_only = _tiny_model(fusion="merged", mlm_weight=0.0, itm_weight=0.0, wra_weight=1.0)
    wra_only.train()
    part = wra_only.training_loss(batch, loss)
    part.loss.backward()
    grad = wra_only.layers[0].att.in_proj_weight.grad
    assert grad is not None and grad.abs().sum() > 0
    for bad, msg in (({"wra_weight": 0.5}, "needs fusion='merged'"), ({"wra_weight": -1.0}, "wra")):
        with pytest.raises(ValueError, match=msg):
            _tiny_model(**bad)
    with pytest.raises(ValueError, match="all_states needs fusion='merged'"):
        _tiny_model()[1].fuse(regions, words, wmask, all_states=True)


def test_mrfr_regresses_the_tower_features_of_masked_regions_from_the_rest():
    _, model = _tiny_model(fusion="merged", mlm_weight=0.0, itm_weight=0.0, mrm_weight=2.0)
    texts = ["a red circle above a blue square", "two green stars", "one cross"]
    batch, loss, out = _seeded_loss(model, texts, 7)
    # by hand with the same draws: the masked positions, their predictions, the MSE
    torch.manual_seed(7)
    _, tok = model.image_encoder.encode(batch["images"])
    txt, words, wmask = model.text_features(batch["text"])
    itc = loss(model.encode_image(batch["images"]), txt).loss
    u = torch.rand(tok.shape[:2])
    chosen = u < 0.15
    none = ~chosen.any(1)
    chosen[none, u.argmin(1)[none]] = True
    pred = model.predict_regions(tok, words, wmask, chosen)
    mrm = F.mse_loss(pred, tok[chosen])
    assert pred.shape == (int(chosen.sum()), tok.shape[-1])
    assert out.logs["mrm"] == pytest.approx(float(mrm.detach()), abs=1e-6)
    total = float((itc + 2.0 * mrm).detach())
    assert float(out.loss.detach()) == pytest.approx(total, abs=1e-5)
    # a masked region's own features never reach its prediction; the others' do
    model.eval()
    with torch.no_grad():
        base = model.predict_regions(tok, words, wmask, chosen)
        hidden = tok.clone()
        hidden[chosen] = torch.randn(int(chosen.sum()), tok.shape[-1])
        assert torch.allclose(model.predict_regions(hidden, words, wmask, chosen), base, atol=1e-6)
        seen = tok.clone()
        seen[~chosen] += 1.0
        assert not torch.allclose(model.predict_regions(seen, words, wmask, chosen), base)
    # every part at once (UNITER's objectives plus ITC): the loss is their weighted sum
    _, full = _tiny_model(fusion="merged", wra_weight=0.1, mrm_weight=1.0)
    _, _, out = _seeded_loss(full, texts, 1)
    logs = out.logs
    parts = logs["itc"] + logs["itm"] + logs["mlm"] + 0.1 * logs["wra"] + logs["mrm"]
    assert float(out.loss.detach()) == pytest.approx(parts, abs=1e-5)
    for bad, msg in (
        ({"mrm_weight": 1.0}, "needs fusion='merged'"),
        ({"mrm_probability": 0.0}, "mrm_probability"),
    ):
        with pytest.raises(ValueError, match=msg):
            _tiny_model(**bad)
    with pytest.raises(ValueError, match="mrm_weight > 0"):
        _tiny_model(fusion="merged")[1].predict_regions(tok, words, wmask, chosen)
    with pytest.raises(ValueError, match="bool mask"):
        model.predict_regions(tok, words, wmask, chosen[:, :3])
