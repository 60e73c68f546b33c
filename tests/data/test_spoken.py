"""Speech data: espeak-ng timings, the cache, and the acoustic features against librosa."""

import numpy as np
import pytest
import torch

from alignfuse.data.audio import log_mel, mel_filterbank, mel_power, mfcc
from alignfuse.data.espeak import espeak_available, synthesize
from alignfuse.data.spoken import REFERENCE, load_spoken, make_sentences

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng not installed (apt-get install espeak-ng)"
)


def _tone(seconds=0.5, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(
        np.float64
    )


def test_features_match_librosa():
    librosa = pytest.importorskip("librosa")
    y = _tone()
    ref_fb = librosa.filters.mel(sr=22050, n_fft=512, n_mels=40, dtype=np.float64)
    np.testing.assert_allclose(
        mel_filterbank(22050, 512, 40, dtype=torch.float64).numpy(), ref_fb, atol=1e-12
    )
    ref = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=512, hop_length=220, n_mels=40).T
    ours = mel_power(torch.from_numpy(y), 22050).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-9 * ref.max())
    ref_mfcc = librosa.feature.mfcc(
        y=y, sr=22050, n_fft=512, hop_length=220, n_mels=40, n_mfcc=13
    ).T
    np.testing.assert_allclose(mfcc(torch.from_numpy(y), 22050).numpy(), ref_mfcc, atol=1e-6)
    assert log_mel(y, 22050).shape == (len(y) // 220 + 1, 40)


def test_int16_audio_is_scaled():
    y = _tone()
    as_int = (y * 32767).astype(np.int16)
    a = mel_power(as_int, 22050)
    b = mel_power(torch.from_numpy(as_int.astype(np.float32) / 32768.0), 22050)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mel_power(np.zeros(0), 22050), "non-empty 1-D"),
        (lambda: mel_power(np.zeros((2, 100)), 22050), "non-empty 1-D"),
        (lambda: mel_power(np.array([0.0, np.nan] * 400), 22050), "NaN"),
        (lambda: mel_filterbank(22050, 512, fmax=20000), "fmax"),
        (lambda: mfcc(_tone(), 22050, n_mfcc=41), "n_mfcc"),
    ],
)
def test_feature_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sentences_are_deterministic_and_distinct():
    a, b = make_sentences(30, 3), make_sentences(30, 3)
    assert a == b and len(set(a)) == 30
    assert make_sentences(30, 4) != a


@needs_espeak
def test_synthesis_timings_are_ordered_and_inside_the_audio():
    syn = synthesize("the large red circle is above the blue star", voice="en-us", rate=175)
    starts = [w.start_ms for w in syn.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(w.start_ms < w.end_ms <= syn.duration_ms for w in syn.words)
    assert " ".join(w.text for w in syn.words) == "the large red circle is above the blue star"
    # the audio is silent before the first phoneme and sounds inside every word
    sr = syn.sample_rate
    for w in syn.words:
        seg = syn.audio[int(w.start_ms * sr / 1000) : int(w.end_ms * sr / 1000)]
        assert np.abs(seg.astype(np.int32)).max() > 500, w
    assert syn.phonemes and syn.phonemes[0][1] >= 0


@needs_espeak
def test_slower_rate_is_longer_and_scales_timings():
    text = "a small green triangle moves left and turns red"
    fast = synthesize(text, rate=220)
    slow = synthesize(text, rate=130)
    assert slow.duration_ms > 1.3 * fast.duration_ms
    assert slow.words[-1].start_ms > 1.3 * fast.words[-1].start_ms


@needs_espeak
def test_bad_voice_and_rate():
    with pytest.raises(ValueError, match="no voice"):
        synthesize("hello", voice="xx-nonexistent")
    with pytest.raises(ValueError, match="rate"):
        synthesize("hello", rate=1000)
    with pytest.raises(ValueError, match="at least one word"):
        synthesize("   ")


@needs_espeak
def test_load_spoken_caches_and_rereads(tmp_path):
    data = load_spoken(n_sentences=3, renderings=2, cache_dir=tmp_path)
    assert len(data.utterances) == 3 * 3
    again = load_spoken(n_sentences=3, renderings=2, cache_dir=tmp_path)
    assert again.info["cache"] == data.info["cache"]
    for u, v in zip(data.utterances, again.utterances, strict=True):
        assert np.array_equal(u.audio, v.audio) and u.words == v.words
    ref = data.reference(0)
    assert (ref.voice, ref.rate) == REFERENCE
    others = data.renderings(0)
    assert len(others) == 2 and all((u.voice, u.rate) != REFERENCE for u in others)
    assert set(ref.boundaries()) >= {0, -1}
    feats = ref.features("mfcc")
    assert feats.shape[1] == 13 and abs(feats.shape[0] - ref.duration_ms / 10) <= 2
    # corrupt one byte of the cached audio: warned and regenerated
    from pathlib import Path

    audio = Path(data.info["cache"]) / "audio.npy"
    raw = bytearray(audio.read_bytes())
    raw[-5] ^= 0xFF
    audio.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt"):
        fixed = load_spoken(n_sentences=3, renderings=2, cache_dir=tmp_path)
    assert np.array_equal(fixed.utterances[-1].audio, data.utterances[-1].audio)


def test_load_spoken_bad_arguments():
    from alignfuse.errors import DataError

    with pytest.raises(DataError, match="n_sentences"):
        load_spoken(n_sentences=0)
    if espeak_available():
        with pytest.raises(DataError, match="exceeds"):
            load_spoken(
                n_sentences=1, renderings=50, voices=("en-us",), rates=(175, 130), use_cache=False
            )
