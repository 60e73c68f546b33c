import pytest
import torch

import alignfuse
from alignfuse.encoders import Tokenizer
from alignfuse.encoders.pretrained import minilm_available
from alignfuse.errors import DataError


def test_tokenizer_vocabulary_from_training_text_only(tmp_path):
    tok = Tokenizer.build(["a red circle", "a blue square, left"])
    assert tok.encode("a crimson circle")[1] == 1  # unseen word -> <unk>
    assert tok.decode(tok.encode("a red square")) == "a red square"
    batch = tok.batch(["a red circle", "", "blue"])
    assert batch["ids"].shape == (3, 3) and batch["lengths"].tolist() == [3, 1, 1]
    tok.save(tmp_path / "v.json")
    assert Tokenizer.load(tmp_path / "v.json").words == tok.words
    with pytest.raises(DataError):
        Tokenizer.build([])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="cannot read vocabulary"):
        Tokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize("name", ["cnn", "vit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_encoders_contract(name, dtype):
    enc = alignfuse.create_encoder(name).to(dtype)
    x = torch.randn(3, 3, 64, 64, dtype=dtype, requires_grad=True)
    out = enc(x)
    assert out.shape == (3, enc.out_dim) and out.dtype == dtype
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert enc.tokens(x).shape[0] == 3
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.randn(3, 64, 64, dtype=dtype))


@pytest.mark.parametrize("name", ["bigru", "transformer"])
def test_text_encoders_contract(name):
    tok = Tokenizer.build(["a red circle above a blue square", "two stars"])
    enc = alignfuse.create_encoder(name, tokenizer=tok)
    prep = enc.prepare(["a red circle", "two blue stars above a square"])
    out = enc(**prep)
    assert out.shape == (2, enc.out_dim)
    out.sum().backward()
    # padding does not change a caption's encoding
    alone = enc(**enc.prepare(["a red circle"]))
    assert torch.allclose(alone[0], out[0], atol=1e-5)


@pytest.mark.skipif(not minilm_available(), reason="the minilm extra is not installed")
def test_minilm_is_a_real_pretrained_encoder():
    enc = alignfuse.create_encoder("minilm")
    assert enc.out_dim == 384
    e = enc(**enc.prepare(["a crimson disk", "a red circle", "a tax return form"]))
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    sim = e @ e.T
    # a pretrained model knows crimson ~ red and disk ~ circle; a random one would not
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert not enc.state_dict()  # frozen weights stay the package's, never checkpointed
    assert enc.frozen_params > 20_000_000


@pytest.mark.skipif(not minilm_available(), reason="the minilm extra is not installed")
def test_minilm_stores_embeddings_on_disk_and_reads_them_back(tmp_path, monkeypatch):
    texts = ["a red circle", "a tax return form", "a red circle", "an owl"]
    enc = alignfuse.create_encoder("minilm", cache_dir=str(tmp_path))
    enc.precompute(texts, store=True)
    (file,) = tmp_path.glob("*.safetensors")
    fresh = enc(**enc.prepare(texts))
    # a second encoder reads the file: the model is never run
    again = alignfuse.create_encoder("minilm", cache_dir=str(tmp_path))

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(again._model, "encode", no_model)
    again.precompute(texts, store=True)
    assert torch.equal(again(**again.prepare(texts)), fresh)
    # other texts are another file; a corrupt file warns and is recomputed
    with pytest.raises(AssertionError, match="the model ran"):
        again.precompute(["a blue square"], store=True)
    file.write_bytes(b"garbage")
    third = alignfuse.create_encoder("minilm", cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="stale or corrupt"):
        third.precompute(texts, store=True)
    torch.testing.assert_close(third(**third.prepare(texts)), fresh)
    assert third.fingerprint() == enc.fingerprint()


@pytest.mark.skipif(not minilm_available(), reason="the minilm extra is not installed")
@pytest.mark.parametrize("top", [1, 2])
def test_top_layers_rerun_from_cached_hidden_states_give_the_encoders_embeddings(tmp_path, top):
    from alignfuse.encoders.pretrained import TopLayers, embed_hidden

    texts = ["How many singers do we have?", "singer: name, country, age", "a", "x " * 40]
    tower = TopLayers(top)
    assert tower.start_layer == 6 - top
    assert sum(p.numel() for p in tower.parameters() if p.requires_grad) == top * 1_774_464
    flat, off = embed_hidden(texts, tower.start_layer, cache_dir=tmp_path)
    rows = [flat[int(off[i]) : int(off[i + 1])] for i in range(len(texts))]
    assert len(rows[2]) == 3  # [CLS] a [SEP]: the markers are included
    width = max(len(r) for r in rows)
    hidden = torch.zeros(len(rows), width, 384)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        hidden[i, : len(r)], mask[i, : len(r)] = r, True
    with torch.no_grad():
        mine = tower(hidden, mask)
    enc = alignfuse.create_encoder("minilm")
    want = enc(**enc.prepare(texts))
    # the same sentence embeddings (the cached states are stored in float16)
    assert torch.allclose(mine, want, atol=2e-3)
    assert float((mine * want).sum(1).min()) > 0.99999
    # the second call reads the file (no model) and gives the same states
    again = embed_hidden(texts, tower.start_layer, cache_dir=tmp_path)
    assert torch.equal(again[0], flat) and torch.equal(again[1], off)
    with pytest.raises(ValueError, match="top must be in"):
        TopLayers(7)
    with pytest.raises(ValueError, match="hidden must be"):
        tower(hidden[0], mask[0])


def test_minilm_missing_path_is_clear(tmp_path):
    if not minilm_available():
        with pytest.raises(ImportError, match="minilm"):
            alignfuse.create_encoder("minilm")
    else:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            alignfuse.create_encoder("minilm", path=str(tmp_path / "nope"))
