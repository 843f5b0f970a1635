"""Synthetic robot-command speech: espeak-ng phrases over many voices, cached, with word timings.

    python -m export.speech_data --train 6000 --eval 300      # builds .cache/speech/ (about 2 min)
    python -m export.speech_data --wavs tests/data/commands   # a few held-out WAVs for the tests

Phrases and the vocabulary come from the one command grammar, edge_stream.voice.grammar
(`make_phrase`, `other_sentence`, `VOCABULARY` with its `<unk>` label); export.synth builds the
multi-synthesizer sets the recognizer trains on from the same phrases and this module's espeak-ng
engine. Speech is
synthesized through libespeak-ng (ctypes, synchronous mode) rather than the CLI because the
library reports where each word starts; a word's end is the last loud sample before the next
word starts. Voices are an espeak-ng accent plus a variant (`en-us+f3`); some accents and some
variants are held out for evaluation (`TRAIN_VOICES`, `HELDOUT_VOICES`). Clean speech is cached
as 16 kHz int16; noise, reverberation, gain and silence padding (`augment`) are applied when
the audio is used, from a seed, so every run of a recipe sees the same audio. Needs Debian
`espeak-ng` (apt-get install -y espeak-ng); never downloads anything.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import hashlib
import json
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_stream.audio import write_wav
from edge_stream.voice import grammar

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # libespeak-ng's fixed output rate
CACHE_DIR = Path(".cache/speech")
DATA_VERSION = 2  # bump when the grammar, voices or synthesis change: it is part of the cache key

ALPHABET = "' abcdefghijklmnopqrstuvwxyz"  # the characters a transcript keeps

# -- the command vocabulary and phrases: edge_stream.voice.grammar --------------------------------

# The one grammar (issue 10) says which words the recognizer has labels for and generates the
# phrases both models train on, so the recognizer and the parser cannot disagree on words.
VOCABULARY = tuple(grammar.recognizer_vocabulary())  # every word the grammar can say, then "<unk>"
UNK_WORD = "<unk>"  # the label of any word outside the grammar
if VOCABULARY[-1] != UNK_WORD:
    raise RuntimeError(f"grammar.recognizer_vocabulary() should end with {UNK_WORD!r}, ends with {VOCABULARY[-1]!r}")


def make_phrase(rng: np.random.Generator) -> str:
    """A spoken phrase of the grammar (commands, two commands, negations, cancels, questions), drawn
    from `rng`; commas where a speaker pauses (dropped from the transcript by `transcript`)."""
    return grammar.Generator(int(rng.integers(2**31)), "train").sample().spoken


@functools.cache
def _sentences(split: str) -> tuple[str, ...]:
    # Only plain lower-case words are spoken: a sentence that is not its own transcript (a stray
    # template such as "... in the {place}") would be said one way and labelled another.
    return tuple(s for s in grammar.non_command_sentences(split) if transcript(s) == s)


def other_sentence(rng: np.random.Generator, split: str = "train") -> str:
    """A sentence that is not a command (read aloud, conversation near the robot) of the grammar's
    `split` ("train" or "heldout"); its words outside the vocabulary are the `<unk>` label."""
    pool = _sentences(split)
    return pool[int(rng.integers(len(pool)))]


def phrase_source_key() -> str:
    """What the phrases are drawn from, for cache keys: the vocabulary (the labels) and the sentence
    lists. Not the generator's templates: a cached set of the same words stays valid acoustics while
    the grammar's phrasings evolve, and re-synthesizing 12000 utterances takes ten minutes."""
    return hashlib.sha256(json.dumps([DATA_VERSION, list(VOCABULARY), _sentences("train"),
                                      _sentences("heldout")]).encode()).hexdigest()[:12]


def transcript(text: str) -> str:
    """What the recognizer should output: lower case, characters in ALPHABET, single spaces."""
    kept = "".join(c for c in text.lower() if c in ALPHABET or c in ",.?!")
    return " ".join(kept.replace(",", " ").replace(".", " ").replace("?", " ").replace("!", " ").split())


# -- voices -------------------------------------------------------------------------------------

TRAIN_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
HELDOUT_ACCENTS = ("en-gb-x-gbcwmd", "en-us-nyc")
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt2", "klatt4",
                  "croak", "Andy", "steph", "robert", "john", "linda", "max", "paul", "quincy", "rob", "zac",
                  "edward", "belinda", "benjamin", "boris", "david", "iven", "Alex", "Annie", "aunty")
HELDOUT_VARIANTS = ("f4", "m6", "klatt3", "michel", "Mike", "steph2", "anika", "grandpa")
TRAIN_VOICES = tuple(f"{a}+{v}" if v else a for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS)
# Held out: an unseen accent with any variant, or an unseen variant with any accent.
HELDOUT_VOICES = tuple(
    [f"{a}+{v}" if v else a for a in HELDOUT_ACCENTS for v in TRAIN_VARIANTS[:12] + HELDOUT_VARIANTS]
    + [f"{a}+{v}" for a in TRAIN_ACCENTS for v in HELDOUT_VARIANTS])


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything that determines one synthesized utterance."""

    text: str
    voice: str
    rate_wpm: int
    pitch: int


@dataclass
class Utterance:
    spec: UtteranceSpec
    audio: np.ndarray  # [n] float32 at 16 kHz, clean, trimmed to speech
    word_spans: list[tuple[str, int, int]]  # (word, start sample, end sample) in transcript order


def random_spec(rng: np.random.Generator, voices) -> UtteranceSpec:
    return UtteranceSpec(text=make_phrase(rng), voice=str(rng.choice(voices)),
                         rate_wpm=int(rng.integers(120, 231)), pitch=int(rng.integers(15, 86)))


# -- synthesis through libespeak-ng -------------------------------------------------------------

class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_WORD, _AUDIO_SYNCHRONOUS, _POS_CHARACTER, _RATE, _PITCH = 1, 2, 1, 1, 3
TRIM_LEVEL = 0.01  # of full scale: quieter is silence when trimming and finding word ends


class Espeak:
    """libespeak-ng in synchronous mode: text -> (22.05 kHz int16 audio, word start samples).
    One per process: the library keeps global state."""

    def __init__(self):
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError:
            sys.exit("libespeak-ng not found: apt-get install -y espeak-ng")
        rate = self.lib.espeak_Initialize(_AUDIO_SYNCHRONOUS, 0, None, 0)
        if rate != ESPEAK_RATE:
            sys.exit(f"libespeak-ng initialised at {rate} Hz, expected {ESPEAK_RATE}")
        self._chunks: list[np.ndarray] = []
        self._words: dict[int, int] = {}  # text position (1-based character) -> sample where that word starts
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the library holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            if events[i].type == _EVENT_WORD:
                # setdefault: espeak sometimes repeats a position (or reports 0) at a clause end
                self._words.setdefault(events[i].text_position, events[i].sample)
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, dict[int, int]]:
        """(22.05 kHz int16 audio, {1-based character position of a word: sample where it starts})."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks, self._words = [], {}
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, dict(self._words)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (scipy.signal.resample's method; no scipy needed).
    The audio is padded with silence first, so the FFT's wrap-around does not matter."""
    n_out = int(round(len(x) * rate_out / rate_in))
    spectrum = np.fft.rfft(x)
    return (np.fft.irfft(spectrum[:n_out // 2 + 1], n_out) * (n_out / len(x))).astype(np.float32)


def synthesize(engine: Espeak, spec: UtteranceSpec) -> Utterance:
    """One utterance: espeak audio resampled to 16 kHz, trimmed to speech, with each word's span."""
    raw, word_starts = engine.synth(spec.text, spec.voice, spec.rate_wpm, spec.pitch)
    pad = ESPEAK_RATE // 10
    audio = resample(np.pad(raw.astype(np.float32) / 32768.0, pad), ESPEAK_RATE, SAMPLE_RATE)
    scale = SAMPLE_RATE / ESPEAK_RATE
    positions = [m.start() + 1 for m in re.finditer(r"[^\s,.?!]+", spec.text)]  # espeak counts from 1
    word_starts = {1: 0, **word_starts}  # the first word's event is occasionally missing: it starts at 0
    missing = [p for p in positions if p not in word_starts]
    if missing:
        raise ValueError(f"espeak reported no word start at character(s) {missing} of {spec.text!r}")
    starts = [int(round((word_starts[p] + pad) * scale)) for p in positions]
    words = transcript(spec.text).split()
    if len(starts) != len(words):
        raise ValueError(f"{spec.text!r}: {len(starts)} words in the text, {len(words)} in its transcript")
    loud = _loud_mask(audio)
    idx = np.flatnonzero(loud)
    first, last = int(idx[0]), int(idx[-1]) + 1
    spans = []
    for k, word in enumerate(words):
        lo = max(starts[k], first)
        hi = starts[k + 1] if k + 1 < len(words) else len(audio)
        inside = np.flatnonzero(loud[lo:hi])
        end = lo + int(inside[-1]) + 1 if len(inside) else lo
        spans.append((word, lo - first, end - first))
    return Utterance(spec, audio[first:last].copy(), spans)


def _loud_mask(audio: np.ndarray, frame: int = 80) -> np.ndarray:
    """Per-sample mask of 5 ms frames whose peak exceeds TRIM_LEVEL (relative to the utterance peak)."""
    n = len(audio) // frame * frame
    peaks = np.abs(audio[:n]).reshape(-1, frame).max(axis=1)
    mask = np.repeat(peaks > TRIM_LEVEL * max(float(peaks.max()), 1e-6), frame)
    return np.concatenate([mask, np.zeros(len(audio) - n, bool)])


_ENGINE: Espeak | None = None


def _worker_synth(spec: UtteranceSpec) -> Utterance | None:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    try:
        return synthesize(_ENGINE, spec)
    except ValueError as exc:  # espeak lost a word event: drop the utterance (same spec, same outcome)
        print(f"skipped: {exc}")
        return None


# -- cached sets --------------------------------------------------------------------------------

@dataclass
class SpeechSet:
    """Clean utterances of one split, stored contiguously: utterance i is audio[offsets[i]:offsets[i+1]]."""

    specs: list[UtteranceSpec]
    audio: np.ndarray  # [total] int16
    offsets: np.ndarray  # [n + 1] int64
    word_spans: list[list[tuple[str, int, int]]]

    @classmethod
    def of_clips(cls, specs: list, clips: list, word_spans: list) -> "SpeechSet":
        """A set from each utterance's int16 audio, stored contiguously."""
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
        return cls(specs, np.concatenate(clips), offsets, word_spans)

    def __len__(self) -> int:
        return len(self.specs)

    def clean(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i]:self.offsets[i + 1]].astype(np.float32) / 32768.0

    def text(self, i: int) -> str:
        return transcript(self.specs[i].text)


def build_set(split: str, n: int, seed: int, workers: int = 2) -> SpeechSet:
    """Synthesize `n` utterances of `split` ('train' or 'eval') from `seed`; same seed, same set."""
    voices = TRAIN_VOICES if split == "train" else HELDOUT_VOICES
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    specs = [random_spec(rng, voices) for _ in range(n)]
    t0 = time.time()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        utts = [u for u in pool.map(_worker_synth, specs, chunksize=32) if u is not None]
    specs = [u.spec for u in utts]
    print(f"{split}: synthesized {n} utterances in {time.time() - t0:.0f} s "
          f"({sum(len(u.audio) for u in utts) / SAMPLE_RATE / 3600:.2f} h of speech)")
    pcm = [np.clip(np.round(u.audio * 32768.0), -32768, 32767).astype(np.int16) for u in utts]
    return SpeechSet.of_clips(specs, pcm, [u.word_spans for u in utts])


def cache_path(split: str, n: int, seed: int) -> Path:
    key = hashlib.sha256(json.dumps([DATA_VERSION, split, n, seed, TRAIN_VOICES, HELDOUT_VOICES,
                                     phrase_source_key()]).encode())
    return CACHE_DIR / f"{split}-{n}-{seed}-{key.hexdigest()[:10]}.npz"


def load_set(split: str, n: int, seed: int = 0) -> SpeechSet:
    """The cached set, synthesized on first use."""
    path = cache_path(split, n, seed)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        specs = [UtteranceSpec(**s) for s in meta["specs"]]
        spans = [[tuple(w) for w in ws] for ws in meta["word_spans"]]
        return SpeechSet(specs, z["audio"], z["offsets"], spans)
    data = build_set(split, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"specs": [s.__dict__ for s in data.specs], "word_spans": data.word_spans}
    np.savez(path, audio=data.audio, offsets=data.offsets, meta=json.dumps(meta))
    print(f"cached {path}")
    return data


# -- augmentation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """Ranges of the random acoustic conditions (noise, room, level, silence)."""

    lead_s: tuple[float, float] = (0.1, 0.8)
    trail_s: tuple[float, float] = (0.4, 0.9)
    peak_db: tuple[float, float] = (-30.0, -1.0)
    noise_p: float = 0.8
    snr_db: tuple[float, float] = (5.0, 30.0)
    reverb_p: float = 0.5
    rt60_s: tuple[float, float] = (0.1, 0.6)
    floor_rms: float = 3e-4  # always present: real "silence" is never digital zero


def augment(clean: np.ndarray, rng: np.random.Generator, cfg: Augment = Augment()) -> tuple[np.ndarray, int]:
    """(noisy audio, sample where the clean speech starts in it)."""
    lead = int(rng.uniform(*cfg.lead_s) * SAMPLE_RATE)
    trail = int(rng.uniform(*cfg.trail_s) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead, np.float32), clean, np.zeros(trail, np.float32)])
    if rng.random() < cfg.reverb_p:
        x = reverberate(x, rng, rng.uniform(*cfg.rt60_s))
    peak = max(float(np.abs(x).max()), 1e-6)
    x *= 10 ** (rng.uniform(*cfg.peak_db) / 20) / peak
    if rng.random() < cfg.noise_p:
        noise = pink_noise(len(x), rng) if rng.random() < 0.5 else rng.standard_normal(len(x)).astype(np.float32)
        speech_rms = float(np.sqrt(np.mean(x[lead:lead + len(clean)] ** 2))) + 1e-9
        noise *= speech_rms / (float(np.sqrt(np.mean(noise ** 2))) + 1e-9) / 10 ** (rng.uniform(*cfg.snr_db) / 20)
        x += noise
    x += rng.standard_normal(len(x)).astype(np.float32) * cfg.floor_rms
    return np.clip(x, -1.0, 1.0).astype(np.float32), lead


def reverberate(x: np.ndarray, rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """Convolve with a random room-like impulse response: a direct path, then exponentially
    decaying noise (-60 dB after rt60_s). Output keeps the input's length."""
    n_ir = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n_ir) / SAMPLE_RATE
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60_s) * 10 ** (rng.uniform(-20, -5) / 20)
    ir[0] = 1.0
    n = len(x) + n_ir
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:len(x)]
    return y.astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by shaping white noise's spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n).astype(np.float32)


# -- committed test WAVs ------------------------------------------------------------------------

TEST_PHRASES = ("stop", "turn left ninety degrees", "move forward two meters", "go back three meters please",
                "turn right, no, left")


def write_test_wavs(out_dir: Path, seed: int = 7) -> Path:
    """Held-out-voice WAVs of TEST_PHRASES (mild noise and room) and transcripts.json with word spans."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    engine = Espeak()
    mild = Augment(lead_s=(0.3, 0.5), trail_s=(0.6, 0.8), peak_db=(-12, -6), noise_p=1.0, snr_db=(20, 25),
                   reverb_p=1.0, rt60_s=(0.15, 0.3))
    entries = []
    for i, text in enumerate(TEST_PHRASES):
        spec = UtteranceSpec(text, str(rng.choice(HELDOUT_VOICES)), int(rng.integers(140, 200)),
                             int(rng.integers(30, 70)))
        utt = synthesize(engine, spec)
        audio, lead = augment(utt.audio, rng, mild)
        name = f"command_{i}.wav"
        write_wav(out_dir / name, audio, SAMPLE_RATE)
        entries.append({"file": name, "text": transcript(text), "voice": spec.voice, "rate_wpm": spec.rate_wpm,
                        "pitch": spec.pitch,
                        "words": [{"word": w, "start_sample": s + lead, "end_sample": e + lead}
                                  for w, s, e in utt.word_spans]})
        print(f"wrote {out_dir / name}: {text!r} ({spec.voice}, {len(audio) / SAMPLE_RATE:.2f} s)")
    path = out_dir / "transcripts.json"
    path.write_text(json.dumps({"sample_rate": SAMPLE_RATE, "utterances": entries}, indent=2) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000, help="training utterances")
    parser.add_argument("--eval", type=int, default=300, help="held-out-voice utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wavs", type=Path, help="write the committed test WAVs here instead")
    args = parser.parse_args(argv)
    if args.wavs:
        write_test_wavs(args.wavs)
        return
    train = load_set("train", args.train, args.seed)
    held = load_set("eval", args.eval, args.seed)
    # The check that can fail: word spans are ordered and inside the audio.
    for data in (train, held):
        for i in range(len(data)):
            n = data.offsets[i + 1] - data.offsets[i]
            ends = [e for _, _, e in data.word_spans[i]]
            if not all(0 <= s <= e <= n for _, s, e in data.word_spans[i]) or ends != sorted(ends):
                sys.exit(f"bad word spans for {data.specs[i]}: {data.word_spans[i]} (audio {n} samples)")
    print(f"ok: {len(train)} train, {len(held)} held-out utterances; vocabulary {len(VOCABULARY)} words")


if __name__ == "__main__":
    main()
