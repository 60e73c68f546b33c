"""BLIP-2's Q-Former: each objective's attention mask (checked by what changes an output and
what does not), the best-query similarity against a loop, the ITM head on gathered rows,
an objective that is the sum of its parts, training with exact resume, and the two-stage
evaluation (re-ranking, hard negatives, Winoground) on the model's own first stage."""

import pytest
import torch
import torch.nn.functional as F

from alignfuse import create_loss
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.evaluate import (
    evaluate,
    evaluate_split,
    evaluate_winoground,
    first_stage,
    two_stage_images,
    two_stage_texts,
)
from alignfuse.errors import ConfigError
from alignfuse.losses import InfoNCELoss
from alignfuse.losses.info_nce import info_nce_from_similarity
from alignfuse.metrics import retrieval_metrics, winoground_scores
from alignfuse.models import build_qformer
from alignfuse.models.prefix_lm import IGNORE
from helpers import assert_resumes_exactly, quiet_trainer, two_stage_winoground_loop

QF_OVERRIDES = [
    "model.name=qformer",
    "model.args={image_args: {width: 4, out_dim: 16}, width: 16, heads: 2, n_queries: 4, "
    "rerank_k: 4}",
]
CAPTIONS = ["a red circle above a blue square", "two green stars", "one small cross"]


def _trainer(tmp_path, tiny, extra=(), name="qf"):
    return quiet_trainer(tmp_path, [*tiny, *QF_OVERRIDES, *extra], name)


def _model(**kw):
    torch.manual_seed(0)
    tok = Tokenizer.build(CAPTIONS)
    args = {"embed_dim": 8, "width": 16, "heads": 2, "n_queries": 3, **kw}
    model = build_qformer(tok, image_args={"width": 4, "out_dim": 16}, **args)
    return tok, model.eval()


def _inputs(model, texts=CAPTIONS, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(len(texts), 3, 64, 64, generator=g)
    return images, model.prepare_text(texts)


def test_each_objective_sees_what_its_mask_allows():
    _, model = _model()
    images, prep = _inputs(model)
    other = model.prepare_text(["two green stars", "one small cross", "a red circle"])
    with torch.no_grad():
        img, image = model.image_features(images)
        _, image2 = model.image_features(images.flip(0))
        tokens = model._text_tokens(prep["ids"], model.cls)
        pad = model._text_pad(prep)
        queries = model.queries.expand(3, -1, -1)
        # unimodal: one pass over [queries; text] equals the two passes alone
        q, t = model._run(queries, tokens, pad, image, "unimodal")
        q_alone, _ = model._run(queries, *model._no_text(3, image), image, "unimodal")
        _, t_alone = model._run(tokens[:, :0], tokens, pad, None, "unimodal")
        assert torch.allclose(q, q_alone, atol=1e-6) and torch.allclose(t, t_alone, atol=1e-6)
        assert torch.allclose(F.normalize(model.image_proj(q), dim=-1), img, atol=1e-6)
        # ITM: the queries see the text and the image
        m = model.match_logits(image, *model.text_features(prep)[1:])
        assert not torch.allclose(m, model.match_logits(image, *model.text_features(other)[1:]))
        assert not torch.allclose(m, model.match_logits(image2, *model.text_features(prep)[1:]))
        # ITG: causal in the text, and the text sees the image through the queries
        changed = {**prep, "ids": prep["ids"].clone()}
        changed["ids"][:, 2:] = 3
        a, targets = model.generation_logits(image, prep)
        b, _ = model.generation_logits(image, changed)
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(
            a[:, 3], b[:, 3]
        )
        assert not torch.allclose(a, model.generation_logits(image2, prep)[0])
    ids, lengths = prep["ids"], prep["lengths"]
    assert targets[1].tolist()[:4] == [*ids[1, :3].tolist(), model.eos]
    assert (targets[1, 4:] == IGNORE).all() and int(lengths[1]) == 3


def test_similarity_is_each_pairs_best_query():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 3, 5, generator=g), torch.randn(4, 5, generator=g)
    got = build_qformer(Tokenizer.build(["a"])).similarity(img, txt, chunk=3)
    loop = torch.tensor(
        [[max(float(img[i, q] @ txt[j]) for q in range(3)) for j in range(4)] for i in range(7)]
    )
    assert torch.allclose(got, loop, atol=1e-6)
    paired = build_qformer(Tokenizer.build(["a"])).pair_similarity(img[:4], txt)
    assert torch.allclose(paired, loop[:4].diagonal(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, Q, D\)"):
        build_qformer(Tokenizer.build(["a"])).similarity(img[:, 0], txt)
    with pytest.raises(ValueError, match="chunk"):
        build_qformer(Tokenizer.build(["a"])).similarity(img, txt, chunk=0)


def test_itm_on_gathered_images_equals_itm_on_their_rows():
    _, model = _model()
    images, prep = _inputs(model)
    with torch.no_grad():
        _, image = model.image_features(images)
        _, tokens, mask = model.text_features(prep)
        index = torch.tensor([2, 0, 2])
        got = model.match_scores(image, tokens, mask, index)
        rows = model.match_scores(image[index], tokens, mask)
    assert torch.allclose(got, rows, atol=1e-6)
    with pytest.raises(ValueError, match="image_index"):
        model.match_scores(image, tokens, mask, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="paired rows"):
        model.match_scores(image[:2], tokens, mask)


def test_the_objective_is_itc_plus_itm_plus_itg():
    _, model = _model(freeze_image=True)
    model.train()
    texts = [*CAPTIONS, "two stars"]
    images, prep = _inputs(model, texts)
    batch = {"images": images, "text": prep}
    loss = InfoNCELoss()
    torch.manual_seed(3)
    out = model.training_loss(batch, loss)
    img, _ = model.image_features(images)
    txt, _, _ = model.text_features(prep)
    itc = info_nce_from_similarity(model.similarity(img, txt), loss.logit_scale)
    assert out.logs["itc"] == pytest.approx(float(itc.detach()), rel=1e-5)
    logits, targets = model.generation_logits(model.image_features(images)[1], prep)
    itg = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    assert out.logs["itg"] == pytest.approx(float(itg.detach()), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(
        out.logs["itc"] + out.logs["itm"] + out.logs["itg"], rel=1e-5
    )
    out.loss.backward()
    assert model.queries.grad is not None and model.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.image_encoder.parameters())  # frozen
    assert not model.image_encoder.training  # a frozen encoder stays in eval mode
    _, only_itc = _model(itm_weight=0.0, itg_weight=0.0)
    assert sorted(only_itc.training_loss(batch, loss).logs) == ["itc", "temperature"]


def test_trainer_trains_the_qformer_resumes_exactly_and_evaluates_two_stage(
    tmp_path, tiny_overrides
):
    full = _trainer(tmp_path, tiny_overrides, name="full")
    hist = full.fit()
    assert {"itc", "itm", "itg", "itm_acc", "itg_acc"} <= hist.train[0].keys()
    assert hist.train[-1]["loss"] < hist.train[0]["loss"] and hist.val
    assert_resumes_exactly(full, lambda: _trainer(tmp_path, tiny_overrides, name="part"))
    model, test = full.model.eval(), full.data["test"]
    res = evaluate_split(model, test)
    res.pop("_sims")
    assert {"rsum", "itc_rsum", "itc_t2i_map", "hard_negative_acc"} <= res.keys()
    assert "modality_gap" not in res  # several embeddings per image: no diagnostics
    assert res["rerank_k"] == 4
    # the first stage is the best-query similarity
    img, image = two_stage_images(model, test.images)
    texts, owner = test.flat_captions()
    txt, _, _ = two_stage_texts(model, texts)
    first = model.similarity(img, txt)
    assert torch.equal(first_stage(model, img, txt), first)
    expect = retrieval_metrics(first, torch.from_numpy(owner))
    assert res["itc_i2t_r1"] == pytest.approx(expect["i2t_r1"])
    assert res["itc_t2i_r5"] == pytest.approx(expect["t2i_r5"])
    # hard negatives: ITM + best-query similarity of each pair
    negs = test.extras["negatives"]
    with torch.no_grad():
        pos_txt = [test.captions[i][n["positive"]] for i, n in enumerate(negs)]
        p_emb, p_t, p_m = model.text_features(model.prepare_text(pos_txt))
        n_emb, n_t, n_m = model.text_features(model.prepare_text([n["caption"] for n in negs]))
        pos = model.match_scores(image, p_t, p_m) + model.pair_similarity(img, p_emb)
        neg = model.match_scores(image, n_t, n_m) + model.pair_similarity(img, n_emb)
    assert res["hard_negative_acc"] == pytest.approx(float((pos > neg).double().mean()), abs=1e-9)
    metrics, _ = evaluate(model, full.data, ["test"])
    assert "winoground/wino_group" in metrics and "test/itc_rsum" in metrics


def test_winoground_of_the_qformer_equals_a_loop_over_groups(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    model, wino = tr.model.eval(), tr.data.winoground
    # each pair's first stage: the best of the image's queries
    scores = two_stage_winoground_loop(model, wino, lambda img, txt: (img @ txt).max())
    assert evaluate_winoground(model, tr.data) == pytest.approx(winoground_scores(scores))


def test_qformer_rejects_bad_input(tmp_path, tiny_overrides):
    tok = Tokenizer.build(["a b"])
    with pytest.raises(ConfigError, match="no argument 'n_querys'; did you mean 'n_queries'"):
        _trainer(tmp_path, tiny_overrides, ["model.args={n_querys: 4}"])
    with pytest.raises(ValueError, match="multiple of heads"):
        build_qformer(tok, width=30, heads=4)
    for bad in (
        {"n_queries": 0},
        {"depth": 0},
        {"rerank_k": 0},
        {"itg_weight": -1.0},
        {"itm_temperature": 0.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_qformer(tok, **bad)
    with pytest.raises(ValueError, match="tokenizer"):
        build_qformer(None)
    _, model = _model(max_regions=4)
    with pytest.raises(ValueError, match="max_regions"):
        model.image_features(torch.rand(1, 3, 64, 64))
    _, model = _model(max_len=2)
    with pytest.raises(ValueError, match="max_len"):
        model._text_tokens(torch.ones(1, 3, dtype=torch.long), model.cls)
    _, model = _model()
    images, prep = _inputs(model)
    with pytest.raises(ValueError, match="disagree"):
        model.generation_logits(model.image_features(images[:2])[1], prep)
    with pytest.raises(ValueError, match="from_similarity"):
        model.training_loss({"images": images, "text": prep}, create_loss("sigmoid"))
