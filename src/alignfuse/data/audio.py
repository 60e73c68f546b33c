"""Acoustic features in torch: mel filterbank, log-mel spectrogram and MFCC.

Conventions are librosa's (and checked against it in the tests): a centred STFT with a
periodic Hann window and zero padding, power spectrum, Slaney mel scale and area
normalisation; MFCC = orthonormal DCT-II of the power in decibels (``ref=1``, ``amin=1e-10``,
``top_db=80``). Everything runs on the input's device.

Example:
    >>> import torch
    >>> wave = torch.sin(2 * torch.pi * 440 * torch.arange(22050) / 22050)
    >>> log_mel(wave, 22050).shape  # (frames, n_mels) at a 10 ms hop
    torch.Size([101, 40])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    lin = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(f.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    lin = _F_SP * m
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Triangular mel filters ``(n_mels, 1 + n_fft // 2)`` with Slaney area normalisation."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}")
    f64 = torch.float64
    fft_f = torch.linspace(0, sample_rate / 2, 1 + n_fft // 2, dtype=f64)
    lo, hi = hz_to_mel(torch.tensor(fmin, dtype=f64)), hz_to_mel(torch.tensor(fmax, dtype=f64))
    mel_f = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=f64))
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights = weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.to(dtype=dtype, device=device)


def _wave(audio: Any) -> torch.Tensor:
    if isinstance(audio, np.ndarray) and audio.dtype == np.int16:
        t = torch.from_numpy(audio.astype(np.float32) / 32768.0)
    else:
        t = torch.as_tensor(audio)
        if not t.is_floating_point():
            t = t.float()
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"audio must be a non-empty 1-D waveform, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("audio contains NaN or Inf")
    return t


def mel_power(
    audio: Any,
    sample_rate: int,
    *,
    n_fft: int = 512,
    hop_ms: float = 10.0,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Mel power spectrogram ``(frames, n_mels)``; frame ``t`` is centred at ``t * hop``.

    ``audio``: a waveform (float in [-1, 1], or int16 samples).
    """
    wave = _wave(audio)
    hop = round(sample_rate * hop_ms / 1000)
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(
        wave,
        n_fft,
        hop_length=hop,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.abs().pow(2)  # (freq, frames)
    fb = mel_filterbank(
        sample_rate, n_fft, n_mels, fmin, fmax, dtype=wave.dtype, device=wave.device
    )
    return (fb @ power).T


def log_mel(audio: Any, sample_rate: int, *, eps: float = 1e-10, **kwargs: Any) -> torch.Tensor:
    """Natural log of the mel power spectrogram, ``(frames, n_mels)``."""
    return torch.log(mel_power(audio, sample_rate, **kwargs) + eps)


def mfcc(
    audio: Any, sample_rate: int, *, n_mfcc: int = 13, top_db: float = 80.0, **kwargs: Any
) -> torch.Tensor:
    """MFCC ``(frames, n_mfcc)``: orthonormal DCT-II of the mel power in decibels."""
    mel = mel_power(audio, sample_rate, **kwargs)
    db = 10.0 * torch.log10(mel.clamp_min(1e-10))
    db = torch.maximum(db, db.max() - top_db)
    n = db.shape[1]
    if not 1 <= n_mfcc <= n:
        raise ValueError(f"n_mfcc must be 1 to n_mels={n}, got {n_mfcc}")
    k = torch.arange(n_mfcc, dtype=db.dtype, device=db.device)[:, None]
    i = torch.arange(n, dtype=db.dtype, device=db.device)[None, :]
    basis = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return db @ basis.T
