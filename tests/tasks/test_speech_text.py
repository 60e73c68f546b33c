"""The log-mel CNN audio encoder and the ``spoken`` speech-text retrieval suite."""

import json
import math

import numpy as np
import pytest
import torch

from alignfuse.data.audio import log_mel
from alignfuse.encoders.audio import AudioCNN, pad_frames
from alignfuse.errors import ConfigError


def _waves(seed=0, sr=16000):
    rng = np.random.default_rng(seed)
    out = []
    for n in (4000, 7100, 2500):
        t = np.arange(n) / sr
        out.append(
            (
                0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t) + 0.01 * rng.normal(size=n)
            ).astype(np.float32)
        )
    return out


def test_prepare_is_normalised_log_mel_padded():
    enc = AudioCNN(n_mels=20, width=8, blocks=2, out_dim=6)
    waves = _waves()
    batch = enc.prepare(waves, 16000)
    assert batch["feats"].shape[0] == 3 and batch["feats"].shape[2] == 20
    for i, w in enumerate(waves):
        f = log_mel(w, 16000, n_mels=20).float()
        f = (f - f.mean()) / f.std()
        n = int(batch["lengths"][i])
        assert n == len(f)
        assert torch.allclose(batch["feats"][i, :n], f, atol=1e-5)
        assert (batch["feats"][i, n:] == 0).all()


def test_padding_never_changes_an_utterances_output():
    torch.manual_seed(0)
    enc = AudioCNN(n_mels=20, width=8, blocks=3, out_dim=6).eval()
    batch = enc.prepare(_waves(), 16000)
    together = enc(batch["feats"], batch["lengths"])
    for i in range(3):
        n = int(batch["lengths"][i])
        alone = enc(batch["feats"][i : i + 1, :n], batch["lengths"][i : i + 1])
        assert torch.allclose(alone, together[i : i + 1], atol=1e-6)
        # extra padding frames full of garbage are ignored too
        junk = torch.cat([batch["feats"][i : i + 1, :n], 50 * torch.randn(1, 37, 20)], 1)
        assert torch.allclose(enc(junk, batch["lengths"][i : i + 1]), alone, atol=1e-6)
    tok, mask = enc.tokens(batch["feats"], batch["lengths"])
    want = [math.ceil(int(n) / 8) for n in batch["lengths"]]  # three stride-2 blocks
    assert mask.sum(1).tolist() == want and tok.shape[:2] == mask.shape
    assert (tok[~mask] == 0).all()


def test_audio_encoder_trains_and_checks_its_inputs():
    enc = AudioCNN(n_mels=20, width=8, blocks=2, out_dim=6)
    batch = enc.prepare(_waves(), 16000)
    enc(**batch).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
    with pytest.raises(ValueError, match=r"\(B, T, 20\)"):
        enc(batch["feats"][..., :10], batch["lengths"])
    with pytest.raises(ValueError, match="positive frame counts"):
        enc(batch["feats"], torch.tensor([3, 0, 2]))
    with pytest.raises(ValueError, match="exceed"):
        enc(batch["feats"], batch["lengths"] + 1000)
    with pytest.raises(ValueError, match="empty"):
        enc.prepare([], 16000)
    with pytest.raises(ValueError, match="floating point"):
        enc(batch["feats"].long(), batch["lengths"])
    with pytest.raises(ValueError, match="NaN or Inf"):
        enc(batch["feats"].index_fill(1, torch.tensor([0]), float("nan")), batch["lengths"])
    with pytest.raises(ValueError, match="sample rates"):
        enc.prepare(_waves(), [16000])
    bad = _waves()[0].copy()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        enc.prepare([bad], 16000)
    with pytest.raises(ValueError, match=">= 1"):
        AudioCNN(blocks=0)
    assert pad_frames([torch.ones(2, 3), torch.ones(5, 3)])["lengths"].tolist() == [2, 5]


SMALL = """
name: spoken_small
description: a small speech-text retrieval run
base:
  task: {{name: speech_text, args: {{test_sentences: 20, held_out_voice: {voice}}}}}
  data: {{name: spoken, args: {{n_sentences: 60, renderings: 2}}}}
  model: {{name: speech_text, embed_dim: 32}}
  train: {{epochs: 15, batch_size: 16, seed: 0, lr: 2.0e-3, schedule: constant,
           warmup_fraction: 0.0, grad_clip: 0.0, eval_every: 0, checkpoint_every: 0}}
experiments:
  - name: tiny
    model: {{text_encoder: bigru, args: {{text_args: {{word_dim: 16, hidden: 16}}, audio_args: {{width: 32, out_dim: 32}}}}}}
    loss: {{name: info_nce}}
"""


def _run(path, out):
    from alignfuse.bench import load_suite, run_suite

    return run_suite(load_suite(str(path)), out, progress=False, log=lambda m: None)


@pytest.mark.slow
def test_spoken_suite_learns_speech_to_text_and_resumes(tmp_path, monkeypatch):
    from alignfuse.data.espeak import espeak_available

    if not espeak_available():
        pytest.skip("libespeak-ng is not installed (apt-get install espeak-ng)")
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))  # synthesised once
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL.format(voice="en-029"))
    (row,) = _run(suite, tmp_path / "out")
    m = row["metrics"]
    # 20 test sentences: chance R@1 is 0.05
    assert m["s2t_r1"] > 0.15 and m["t2s_r1"] > 0.15
    assert 0 <= m["s2t_r1"] <= m["s2t_r5"] <= m["s2t_r10"] <= 1
    # per-voice R@1 averages back to the overall figure
    from alignfuse.data import load_spoken

    data = load_spoken(n_sentences=60, renderings=2)
    test = [u for u in data.utterances if u.sentence >= 40]
    counts = {v: sum(u.voice == v for u in test) for v in {u.voice for u in test}}
    pooled = sum(m[f"s2t_r1_{v}"] * c for v, c in counts.items()) / len(test)
    assert pooled == pytest.approx(m["s2t_r1"], abs=1e-12)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "en-029 (not in training)" in report and "chance speech-to-text R@1: 0.050" in report
    assert json.loads((tmp_path / "out" / "results.jsonl").read_text())["name"] == "tiny"
    assert len(row["history"]["epochs"]) == 15
    # a second run finds the finished experiment (same config hash) and reuses its results
    (again,) = _run(suite, tmp_path / "out")
    assert again["metrics"] == m and again["history"] == row["history"]


def test_spoken_suite_rejects_bad_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    from alignfuse.data.espeak import espeak_available

    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.format(voice="en-029").replace("test_sentences", "test_sentencez"))
    if not espeak_available():
        pytest.skip("libespeak-ng is not installed")
    with pytest.raises(ConfigError, match="did you mean 'task.args.test_sentences'"):
        _run(bad, tmp_path / "o1")
    small = SMALL.format(voice="klingon").replace("n_sentences: 60", "n_sentences: 4")
    bad.write_text(small.replace("test_sentences: 20", "test_sentences: 2"))
    with pytest.raises(ConfigError, match="held_out_voice 'klingon'"):
        _run(bad, tmp_path / "o2")
