"""A LLaVA-style captioner (Liu et al. 2023, "Visual instruction tuning"): the image
encoder's tokens, mapped by a two-layer MLP projector (LLaVA-1.5's) into the width of a
decoder-only language model, are the prefix of the caption, and the model is trained by
next-word prediction on the caption's words (and an end-of-caption token) only.

The same model scores an image-caption pair by the caption's mean log-probability per
token given the image (:meth:`PrefixLM.log_likelihood`), which is how the benchmark
evaluates a generative model on hard negatives and Winoground (as generative scores in
"VisualGPTScore", Lin et al. 2023), and it writes captions by greedy decoding
(:meth:`PrefixLM.generate`), scored by BLEU, ROUGE-L and CIDEr-D.

Differences from LLaVA, by design of this small-data setting: the language model is a
small causal Transformer over the training vocabulary, trained from scratch together with
the image encoder and the projector (LLaVA takes a pretrained CLIP ViT and a pretrained
LLM, and trains the projector first); there is no instruction data, only captions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.outputs import LossOutput
from alignfuse.registry import ENCODERS, MODELS

IGNORE = -100  # cross-entropy's ignore_index: positions past a caption's end


def next_word_targets(ids: torch.Tensor, lengths: torch.Tensor, end: int) -> torch.Tensor:
    """Targets ``[w_1 .. w_n, end]`` ``(B, L + 1)`` of captions ``ids (B, L)`` with
    ``lengths`` (``IGNORE`` past each caption's end): what the positions ``[start, w_1 ..
    w_n]`` of a causal model predict."""
    lengths = lengths.to(ids.device)
    targets = F.pad(ids, (0, 1), value=0)
    pos = torch.arange(ids.shape[1] + 1, device=ids.device)[None, :]
    targets = torch.where(pos == lengths[:, None], torch.full_like(targets, end), targets)
    return targets.masked_fill(pos > lengths[:, None], IGNORE)


def next_word_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of ``logits (B, T, V)`` against ``targets (B, T)`` over the positions
    that are not ``IGNORE``, and the argmax accuracy there."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    valid = targets != IGNORE
    return loss, float((logits.argmax(-1)[valid] == targets[valid]).float().mean())


class PrefixLM(nn.Module):
    """Image tokens -> MLP projector -> prefix of a causal Transformer language model.

    Args:
        image_encoder: module with ``tokens(images) -> (B, R, out_dim)``.
        tokenizer: the training vocabulary (ids 0 and 1 are ``<pad>`` and ``<unk>``); the
            model adds a begin (``len(tokenizer)``) and an end (``len(tokenizer) + 1``) token.
        width: the language model's width.
        depth: its number of layers.
        heads: attention heads per layer.
        max_len: most words of a caption (longer ones are cut, as the tokenizer does).
        max_regions: most image tokens the position table takes.
        beam_size: captions of :meth:`generate` by beam search over this many hypotheses;
            1 (the default) is greedy decoding.
        length_penalty: beam search ranks a finished caption by its summed log-probability
            over ``len ** length_penalty`` (``len``: its tokens, the end token included; the
            convention of Hugging Face's ``generate``); 0 ranks by the sum.

    Example:
        >>> tok = Tokenizer.build(["a red circle", "a blue square"])
        >>> model = build_prefix_lm(tok, width=16, heads=2, image_args={"width": 4, "out_dim": 16})
        >>> batch = {"images": torch.rand(2, 3, 64, 64),
        ...          "text": model.prepare_text(["a red circle", "a blue square"])}
        >>> sorted(model.training_loss(batch).logs)
        ['lm', 'token_acc']
        >>> len(model.eval().generate(torch.rand(3, 3, 64, 64), max_len=4))
        3
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        tokenizer: Tokenizer,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 32,
        max_regions: int = 256,
        beam_size: int = 1,
        length_penalty: float = 1.0,
    ) -> None:
        super().__init__()
        if not callable(getattr(image_encoder, "tokens", None)):
            raise ValueError(
                "PrefixLM needs an image encoder with tokens(); "
                f"{type(image_encoder).__name__} has none"
            )
        for name, value in (
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("max_len", max_len),
            ("max_regions", max_regions),
            ("beam_size", beam_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.image_encoder, self.tokenizer = image_encoder, tokenizer
        self.max_len, self.max_regions = max_len, max_regions
        self.beam_size, self.length_penalty = beam_size, float(length_penalty)
        self.bos, self.eos = len(tokenizer), len(tokenizer) + 1
        self.vocab_size = len(tokenizer) + 2
        self.projector = nn.Sequential(
            nn.Linear(int(image_encoder.out_dim), width),  # type: ignore[arg-type]
            nn.GELU(),
            nn.Linear(width, width),
        )
        self.embed = nn.Embedding(self.vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_regions + max_len + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, 0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.decoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.vocab_size)

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Word ids and lengths of captions (runs in the data loader)."""
        return self.tokenizer.batch(texts, self.max_len)

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images to projected prefix tokens ``(B, R, width)``."""
        tok = self.image_encoder.tokens(images)  # type: ignore[operator]
        if tok.shape[1] > self.max_regions:
            raise ValueError(
                f"the image encoder gives {tok.shape[1]} tokens; max_regions is {self.max_regions}"
            )
        out: torch.Tensor = self.projector(tok)
        return out

    def logits(self, prefix: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab)`` at the ``T`` text positions of ``inputs``
        (``(B, T)`` ids starting with the begin token), after the image prefix."""
        if prefix.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"prefix and inputs disagree: {prefix.shape[0]}, {inputs.shape[0]} rows"
            )
        p, t = prefix.shape[1], inputs.shape[1]
        if t > self.max_len + 1:
            raise ValueError(
                f"inputs have {t} positions; the model takes max_len + 1 = {self.max_len + 1}"
            )
        x = torch.cat([prefix, self.embed(inputs)], 1) + self.pos[:, : p + t]
        causal = nn.Transformer.generate_square_subsequent_mask(
            p + t, device=x.device, dtype=x.dtype
        )
        out: torch.Tensor = self.head(self.norm(self.decoder(x, mask=causal, is_causal=True)))
        return out[:, p:]

    def teacher_forcing(
        self, prepared: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[begin, w_1 .. w_n]`` and targets ``[w_1 .. w_n, end]`` (``IGNORE`` past
        each caption's end), both ``(B, L + 1)``."""
        ids, lengths = prepared["ids"], prepared["lengths"].to(prepared["ids"].device)
        b = ids.shape[0]
        inputs = torch.cat(
            [torch.full((b, 1), self.bos, dtype=ids.dtype, device=ids.device), ids], 1
        )
        return inputs, next_word_targets(ids, lengths, self.eos)

    def training_loss(
        self, batch: Mapping[str, Any], loss_fn: nn.Module | None = None
    ) -> LossOutput:
        """Next-token cross-entropy over the captions' words and end tokens (``loss_fn``, the
        configured contrastive loss, is not used: a captioner has no embedding pair)."""
        inputs, targets = self.teacher_forcing(batch["text"])
        logits = self.logits(self.prefix(batch["images"]), inputs)
        loss, acc = next_word_loss(logits, targets)
        return LossOutput(loss, {"lm": float(loss.detach()), "token_acc": acc})

    def log_likelihood(
        self, prefix: torch.Tensor, prepared: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean log-probability per token (words and the end token) of each caption given
        its row of ``prefix``: ``(B,)``, higher = more likely."""
        inputs, targets = self.teacher_forcing(prepared)
        logp = self.logits(prefix, inputs).log_softmax(-1)
        valid = targets != IGNORE
        picked = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0] * valid
        return picked.sum(1) / valid.sum(1)

    def _layer_step(
        self, layer: nn.TransformerEncoderLayer, x: torch.Tensor, cache: list[torch.Tensor]
    ) -> torch.Tensor:
        """One pre-norm decoder layer on the new positions ``x`` ``(B, T, width)``, their keys
        and values appended to ``cache`` (``[keys, values]`` of the earlier positions, each
        ``(B, heads, T_past, width / heads)``; empty on the first call, whose ``T``
        positions attend causally among themselves)."""
        attn = layer.self_attn
        b, t, w = x.shape
        q, k, v = (
            z.view(b, t, attn.num_heads, w // attn.num_heads).transpose(1, 2)
            for z in F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
        )
        first = not cache
        if not first:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        cache[:] = [k, v]
        # a single new position attends to every cached one: no mask; the first call's
        # block is causal (top-left aligned, as it starts at position 0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=first and t > 1)
        x = x + attn.out_proj(o.transpose(1, 2).reshape(b, t, w))
        h: torch.Tensor = layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))  # type: ignore[operator]
        return x + h

    def _step_logits(self, x: torch.Tensor, caches: list[list[torch.Tensor]]) -> torch.Tensor:
        """Next-token logits ``(B, vocab)`` after the last of the new positions ``x``."""
        for layer, cache in zip(self.decoder.layers, caches, strict=True):
            x = self._layer_step(layer, x, cache)  # type: ignore[arg-type]
        out: torch.Tensor = self.head(self.norm(x[:, -1]))
        return out

    def _allowed_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the tokens a caption may contain: never ``<pad>``,
        ``<unk>`` or the begin token (renormalised over the rest)."""
        logits = logits.clone()
        logits[:, [0, 1, self.bos]] = float("-inf")
        return logits.log_softmax(-1)

    def _first_step(self, prefix: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Log-probabilities of the first word after the prefix and the begin token, and the
        layers' key-value caches of those positions."""
        p = prefix.shape[1]
        caches: list[list[torch.Tensor]] = [[] for _ in self.decoder.layers]
        bos = torch.full((prefix.shape[0], 1), self.bos, dtype=torch.long, device=prefix.device)
        new = torch.cat([prefix, self.embed(bos)], 1) + self.pos[:, : p + 1]
        return self._allowed_log_probs(self._step_logits(new, caches)), caches

    def _next_log_probs(
        self, tokens: torch.Tensor, position: int, caches: list[list[torch.Tensor]]
    ) -> torch.Tensor:
        """Log-probabilities after appending ``tokens`` ``(N,)`` at sequence ``position``."""
        new = self.embed(tokens[:, None]) + self.pos[:, position : position + 1]
        return self._allowed_log_probs(self._step_logits(new, caches))

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        max_len: int | None = None,
        use_cache: bool = True,
        beam_size: int | None = None,
    ) -> list[str]:
        """Captions of ``(B, 3, H, W)`` images, by greedy decoding or beam search (never
        ``<pad>``, ``<unk>`` or the begin token; a caption stops at the end token or after
        ``max_len`` words).

        ``beam_size`` (default: the model's ``beam_size``) above 1 runs beam search: each
        step extends every live hypothesis by every token and keeps the ``2 * beam_size``
        best sums of log-probabilities; those that end among the top ``beam_size`` are
        finished (ranked by the sum over ``len ** length_penalty``), the best
        ``beam_size`` others live on; an image is done once it has ``beam_size`` finished
        captions (fairseq's rule), and the live hypotheses at ``max_len`` words count as
        finished. With ``use_cache`` (the default) each layer keeps the keys and values of
        the positions decoded so far, so a step runs the model on one new token per
        hypothesis; ``use_cache=False`` (greedy only) re-runs it on the whole sequence at
        each step, the reference the cache is tested against."""
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        k = self.beam_size if beam_size is None else beam_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"beam_size must be a positive integer, got {k!r}")
        if k > 1 and not use_cache:
            raise ValueError("beam search runs with the key-value cache: use_cache must be True")
        steps = self.max_len if max_len is None else min(max_len, self.max_len)
        prefix = self.prefix(images)
        rows = (
            self._beam_search(prefix, steps, k) if k > 1 else self._greedy(prefix, steps, use_cache)
        )
        return [self.tokenizer.decode(row) for row in rows]

    def _greedy(self, prefix: torch.Tensor, steps: int, use_cache: bool) -> list[list[int]]:
        """Greedy word ids of each row of ``prefix`` (without the end token)."""
        b, p = prefix.shape[:2]
        seq = torch.full((b, 1), self.bos, dtype=torch.long, device=prefix.device)
        done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
        logp, caches = self._first_step(prefix) if use_cache else (None, [])
        for step in range(steps):
            if not use_cache:
                logp = self._allowed_log_probs(self.logits(prefix, seq)[:, -1])
            assert logp is not None
            nxt = logp.argmax(-1).masked_fill(done, 0)
            done |= nxt == self.eos
            seq = torch.cat([seq, nxt[:, None]], 1)
            if bool(done.all()):
                break
            if use_cache and step + 1 < steps:
                logp = self._next_log_probs(nxt, p + step + 1, caches)
        out = []
        for row in seq[:, 1:].tolist():
            out.append(row[: row.index(self.eos)] if self.eos in row else row)
        return out

    def _beam_search(self, prefix: torch.Tensor, steps: int, k: int) -> list[list[int]]:
        """Beam-search word ids of each row of ``prefix`` (see :meth:`generate`)."""
        b, p = prefix.shape[:2]
        dev, alpha, inf = prefix.device, self.length_penalty, float("-inf")
        logp, caches = self._first_step(prefix)
        vocab = logp.shape[-1]
        for cache in caches:  # k copies of each image's hypothesis, only the first alive
            cache[:] = [t.repeat_interleave(k, 0) for t in cache]
        logp = logp.repeat_interleave(k, 0)
        scores = torch.full((b, k), inf, dtype=logp.dtype, device=dev)
        scores[:, 0] = 0.0
        seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
        active = [True] * b
        for step in range(steps):
            cand = (scores[..., None] + logp.view(b, k, vocab)).view(b, -1)
            top, idx = (t.tolist() for t in cand.topk(min(2 * k, k * vocab), dim=1))
            new_scores = torch.full((b, k), inf, dtype=logp.dtype)
            origin = torch.zeros(b, k, dtype=torch.long)
            tokens = torch.zeros(b, k, dtype=torch.long)
            new_seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
            for i in range(b):
                alive = 0
                for rank, (sc, j) in enumerate(zip(top[i], idx[i], strict=True)):
                    if not active[i] or sc == inf or alive == k:
                        break
                    beam, tok = divmod(j, vocab)
                    if tok == self.eos:
                        if rank < k:
                            finished[i].append((sc / (step + 1) ** alpha, seqs[i][beam]))
                        continue
                    new_scores[i, alive], origin[i, alive], tokens[i, alive] = sc, beam, tok
                    new_seqs[i][alive] = [*seqs[i][beam], tok]
                    alive += 1
                if len(finished[i]) >= k:
                    active[i] = False
            scores, seqs = new_scores.to(dev), new_seqs
            if not any(active):
                break
            if step + 1 < steps:
                rows = (torch.arange(b)[:, None] * k + origin).view(-1).to(dev)
                for cache in caches:
                    cache[:] = [t.index_select(0, rows) for t in cache]
                logp = self._next_log_probs(tokens.view(-1).to(dev), p + step + 1, caches)
        for i in range(b):  # hypotheses still alive after max_len words
            if active[i]:
                finished[i] += [
                    (sc / steps**alpha, seqs[i][j])
                    for j, sc in enumerate(scores[i].tolist())
                    if sc != inf
                ]
        return [max(f, key=lambda e: e[0])[1] for f in finished]


@MODELS.register("prefix_lm")
def build_prefix_lm(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "cnn",
    text_encoder: str = "none",
    image_args: dict[str, Any] | None = None,
    width: int = 128,
    depth: int = 2,
    heads: int = 4,
    max_len: int = 32,
    max_regions: int = 256,
    beam_size: int = 1,
    length_penalty: float = 1.0,
) -> PrefixLM:
    """LLaVA-style captioner from a registered image encoder. ``embed_dim`` and
    ``text_encoder`` are the config's generic model keys and are not used: the language
    model is the text side."""
    if tokenizer is None:
        raise ValueError("prefix_lm needs a tokenizer built from training captions")
    img = ENCODERS.create(image_encoder, **(image_args or {}))
    return PrefixLM(
        img, tokenizer, width, depth, heads, max_len, max_regions, beam_size, length_penalty
    )
