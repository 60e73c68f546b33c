"""Speech synthesis with word and phoneme timings through libespeak-ng (ctypes).

The espeak-ng command line prints no timings, but its C library reports WORD and PHONEME
events, with their position in the audio in milliseconds, to a synthesis callback when it is
initialised with synchronous output and phoneme events. A word ends where the next word or
pause begins (the last word ends at the final pause).

libespeak-ng keeps state from one utterance to the next (the same call gives slightly
different audio the second time in a process), so every synthesis runs in a forked child
process that initialises the library afresh and seeds its random generator: the output is
a function of the arguments alone. This needs ``os.fork`` (Linux, macOS).

espeak-ng is a Debian package (``apt-get install espeak-ng``), installed by the README's
set-up and by ``.ci/run``; :func:`espeak_available` tells whether the library loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from alignfuse.errors import DataError

# enums of speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_RATE = 1
_PITCH = 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


@dataclass
class Word:
    """A word of the text and where it is spoken (milliseconds from the start)."""

    text: str
    start_ms: float
    end_ms: float


@dataclass
class Synthesis:
    """Synthesised speech: int16 samples, the sample rate, word and phoneme timings."""

    audio: np.ndarray
    sample_rate: int
    words: list[Word]
    phonemes: list[tuple[str, float]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.audio) / self.sample_rate


def _library() -> ctypes.CDLL | None:
    if "lib" in _STATE:
        return _STATE["lib"]  # type: ignore[return-value]
    lib = None
    for name in (ctypes.util.find_library("espeak-ng"), "libespeak-ng.so.1", "libespeak-ng.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    _STATE["lib"] = lib
    return lib


def espeak_available() -> bool:
    """Whether libespeak-ng can be loaded (and so :func:`synthesize` can run)."""
    return _library() is not None and hasattr(os, "fork")


def _init() -> tuple[ctypes.CDLL, int]:
    lib = _library()
    if lib is None:
        raise DataError(
            "libespeak-ng is not installed: run `apt-get install espeak-ng` (the README's set-up "
            "and .ci/run do this)"
        )
    if "rate" not in _STATE:
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise DataError(f"espeak_Initialize failed (returned {rate})")
        _STATE["rate"] = rate
    return lib, int(_STATE["rate"])  # type: ignore[call-overload]


def synthesize(
    text: str, *, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int = 0
) -> Synthesis:
    """Speak ``text`` with an espeak-ng ``voice`` (e.g. ``"en-us"``, ``"en-us+f3"``) at ``rate``
    words per minute; return the audio with the timing of every word and phoneme.

    Deterministic: the same arguments give the same samples (see the module note)."""
    if not text.strip():
        raise ValueError("text must contain at least one word")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80 to 450 words per minute, got {rate}")
    if not espeak_available():
        raise DataError(
            "libespeak-ng is not installed: run `apt-get install espeak-ng` (the README's set-up "
            "and .ci/run do this)"
        )
    read_end, write_end = os.pipe()
    with _LOCK:
        pid = os.fork()
    if pid == 0:  # child: fresh library state, seeded, result through the pipe
        code = 0
        try:
            ctypes.CDLL(None).srand(ctypes.c_uint(seed))
            syn = _synthesize_here(text, voice, rate, pitch)
            head = json.dumps(
                {
                    "sr": syn.sample_rate,
                    "words": [[w.text, w.start_ms, w.end_ms] for w in syn.words],
                    "phonemes": syn.phonemes,
                }
            ).encode()
            body = syn.audio.astype("<i2").tobytes()
        except BaseException as err:  # reported to the parent
            head = json.dumps({"error": type(err).__name__, "message": str(err)}).encode()
            body = b""
            code = 1
        with os.fdopen(write_end, "wb") as out:
            out.write(struct.pack("<QQ", len(head), len(body)) + head + body)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        raw = inp.read()
    os.waitpid(pid, 0)
    if len(raw) < 16:
        raise DataError(f"espeak-ng synthesis process died for {text!r}")
    nh, nb = struct.unpack("<QQ", raw[:16])
    head = json.loads(raw[16 : 16 + nh])
    if "error" in head:
        kind = ValueError if head["error"] == "ValueError" else DataError
        raise kind(head["message"])
    audio = np.frombuffer(raw[16 + nh : 16 + nh + nb], dtype="<i2").astype(np.int16)
    words = [Word(t, float(a), float(b)) for t, a, b in head["words"]]
    return Synthesis(
        audio, int(head["sr"]), words, [(str(p), float(ms)) for p, ms in head["phonemes"]]
    )


def _synthesize_here(text: str, voice: str, rate: int, pitch: int) -> Synthesis:
    with _LOCK:
        lib, sr = _init()
        chunks: list[np.ndarray] = []
        events: list[tuple[int, int, int, int, str]] = []

        def callback(wav: ctypes.Array[ctypes.c_short], n: int, ev: ctypes.Array[_Event]) -> int:
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while ev[i].type != _EVENT_LIST_TERMINATED:
                e = ev[i]
                name = e.id.string.decode("utf-8", "replace") if e.type == _EVENT_PHONEME else ""
                events.append((e.type, e.text_position, e.length, e.audio_position, name))
                i += 1
            return 0

        cb = _CALLBACK(callback)
        lib.espeak_SetSynthCallback(cb)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices=en`)")
        lib.espeak_SetParameter(_RATE, int(rate), 0)
        lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise DataError(f"espeak_Synth failed with error {err} for {text!r}")
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return Synthesis(audio.astype(np.int16), sr, *_timings(text, events, 1000.0 * len(audio) / sr))


def _timings(
    text: str, events: list[tuple[int, int, int, int, str]], total_ms: float
) -> tuple[list[Word], list[tuple[str, float]]]:
    raw = text.encode("utf-8")
    starts = [(pos, length, ms) for kind, pos, length, ms, _ in events if kind == _EVENT_WORD]
    phonemes = [(name, float(ms)) for kind, _, _, ms, name in events if kind == _EVENT_PHONEME]
    pauses = sorted(ms for name, ms in phonemes if name.startswith("_"))
    ends = [ms for kind, _, _, ms, _ in events if kind in (_EVENT_END, _EVENT_MSG_TERMINATED)]
    words = []
    for k, (pos, length, ms) in enumerate(starts):
        nxt = starts[k + 1][2] if k + 1 < len(starts) else (max(ends) if ends else total_ms)
        later_pauses = [p for p in pauses if ms < p < nxt]
        end = later_pauses[0] if later_pauses else nxt
        # espeak speaks some pairs as one unit ("of the"): a unit runs to the next event's text
        stop = starts[k + 1][0] - 1 if k + 1 < len(starts) else pos - 1 + length
        word = raw[pos - 1 : stop].decode("utf-8", "replace").strip()
        words.append(Word(word, float(ms), float(min(end, total_ms))))
    return words, phonemes
