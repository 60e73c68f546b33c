"""Audio encoders over log-mel frames. ``prepare(waves, sample_rates)`` turns waveforms into a
padded batch of log-mel features (run in the data loader); ``forward(feats, lengths)`` returns
``(B, out_dim)`` and ``tokens(feats, lengths)`` the per-frame features with their mask, for the
token-level interaction models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alignfuse.data.audio import log_mel
from alignfuse.registry import ENCODERS


def pad_frames(frames: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Frame sequences ``(T_i, n_mels)`` as a zero-padded ``feats (B, T, n_mels)`` and their
    ``lengths (B,)``: the input of :class:`AudioCNN`."""
    lengths = torch.tensor([len(f) for f in frames], dtype=torch.long)
    feats = frames[0].new_zeros(len(frames), int(lengths.max()), frames[0].shape[1])
    for i, f in enumerate(frames):
        feats[i, : len(f)] = f
    return {"feats": feats, "lengths": lengths}


@ENCODERS.register("audio_cnn")
class AudioCNN(nn.Module):
    """Log-mel frames, per-utterance normalised, through ``blocks`` 1-D convolutions over time
    (kernel 5, stride 2, GELU, LayerNorm over channels), then a masked mean over frames and a
    linear map (in the style of the speech front ends of audio-text retrieval, e.g. the
    convolutional encoders of Harwath et al. 2018).

    Padding never changes an utterance's output: padded frames are zeroed before every
    convolution, so a real frame sees the same zeros as at the end of an unpadded batch, and
    the pooling covers the real output frames only (``ceil(length / 2)`` per block).

    Args:
        n_mels: mel bands of the input features (``prepare`` computes them).
        width: channels of the convolutions.
        blocks: stride-2 convolution blocks (time resolution ``10 ms * 2^blocks``).
        out_dim: size of the pooled output.
        hop_ms: frame hop of the log-mel features.
    """

    modality = "audio"
    trainable = True

    def __init__(
        self,
        n_mels: int = 40,
        width: int = 128,
        blocks: int = 3,
        out_dim: int = 256,
        hop_ms: float = 10.0,
    ) -> None:
        super().__init__()
        if min(n_mels, width, blocks, out_dim) < 1 or hop_ms <= 0:
            raise ValueError(
                "n_mels, width, blocks and out_dim must be >= 1 and hop_ms > 0, got "
                f"{n_mels}, {width}, {blocks}, {out_dim}, {hop_ms}"
            )
        self.n_mels, self.hop_ms, self.out_dim = n_mels, hop_ms, out_dim
        chans = [n_mels] + [width] * blocks
        self.convs = nn.ModuleList(
            nn.Conv1d(chans[i], chans[i + 1], 5, stride=2, padding=2) for i in range(blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.proj = nn.Linear(width, out_dim)

    def prepare(
        self, waves: Sequence[Any], sample_rates: Sequence[int] | int
    ) -> dict[str, torch.Tensor]:
        """Padded log-mel features ``feats (B, T, n_mels)`` and ``lengths (B,)`` of waveforms
        (float in [-1, 1] or int16), each normalised to zero mean and unit variance."""
        if len(waves) == 0:
            raise ValueError("waves is empty")
        rates = [sample_rates] * len(waves) if isinstance(sample_rates, int) else list(sample_rates)
        if len(rates) != len(waves):
            raise ValueError(f"{len(waves)} waves but {len(rates)} sample rates")
        frames = []
        for w, sr in zip(waves, rates, strict=True):
            f = log_mel(w, sr, n_mels=self.n_mels, hop_ms=self.hop_ms).float()
            frames.append((f - f.mean()) / f.std().clamp_min(1e-5))
        return pad_frames(frames)

    def _check(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if feats.ndim != 3 or feats.shape[2] != self.n_mels:
            raise ValueError(
                f"feats must be (B, T, {self.n_mels}) log-mel frames, got {tuple(feats.shape)}"
            )
        if not feats.is_floating_point():
            raise ValueError(f"feats must be floating point log-mel frames, got {feats.dtype}")
        if not torch.isfinite(feats.sum()) and not torch.isfinite(feats).all():
            raise ValueError("feats contains NaN or Inf")
        lengths = lengths.to(feats.device)
        if lengths.shape != (feats.shape[0],) or int(lengths.min()) < 1:
            raise ValueError(f"lengths must be ({feats.shape[0]},) positive frame counts")
        if int(lengths.max()) > feats.shape[1]:
            raise ValueError(f"lengths exceed the {feats.shape[1]} frames of feats")
        return lengths

    def tokens(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features ``(B, T', width)`` (zeros at padding) and their mask ``(B, T')``."""
        lengths = self._check(feats, lengths)
        x = feats.transpose(1, 2)  # (B, n_mels, T)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            mask = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
            x = conv(x * mask[:, None, :].to(x.dtype))
            lengths = (lengths + 1) // 2
            x = nn.functional.gelu(norm(x.transpose(1, 2))).transpose(1, 2)
        mask = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
        out = x.transpose(1, 2) * mask[..., None].to(x.dtype)
        return out, mask

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tok, mask = self.tokens(feats, lengths)
        m = mask[..., None].to(tok.dtype)
        out: torch.Tensor = self.proj((tok * m).sum(1) / m.sum(1))
        return out
