"""One interface over offline English speech synthesizers: espeak-ng, flite and festival (Debian
packages) and GnuSpeech (its WebAssembly build, from the npm registry).

    python -m export.synth --list                 # engines, voices and the proposed train/eval split
    python -m export.synth --demo /tmp/synth      # clean and augmented WAVs per engine, timings, checks

Why: the recognizer trained on espeak-ng alone gets about 60% word errors on other synthesizers
(issue 10). This module gives every engine the same verb, `synthesize(text, voice, rate, pitch_st)`,
returning 16 kHz int16 mono audio trimmed to speech and, where the engine gives it cheaply, each
word's span in samples (the convention of `speech_data.Utterance.word_spans`):

- espeak-ng: in process through libespeak-ng (`speech_data.Espeak`); word starts from the library.
- flite: the CLI; `-psdur` prints each phone's end time, and each word's phone count comes from
  `flite -ps` on the word alone (cached), so phones are split into words without a forced aligner.
- festival: `festival --batch` on a generated Scheme script; word spans are the start of a word's
  first segment and the end of its last. Start-up costs ~0.7 s, so `synthesize_many` runs one
  process for a list of texts.
- gnuspeech: an articulatory synthesizer (a tube model of the vocal tract) run by node on
  `export/gnuspeech/say.mjs`, installed on first use by `npm ci` from its lock file. Its talkers
  are parameters (tract length, glottal pulse, breathiness, radii): 48 drawn ones train, the
  package's four presets are its held-out voices. Word spans from the postures' onsets.
- mbrola: diphone voices (Debian contrib/non-free) driven by espeak-ng's front end (`--pho`);
  word spans from the phone durations mbrola renders exactly.
- pico: SVOX Pico's `pico2wave` (non-free), held out entirely like festival; word ends approximate.

`rate` is a speaking-rate factor (1 = the voice's default, 1.25 = 25% faster) and `pitch_st` a
shift of the voice's mean F0 in semitones. Not every voice can shift pitch (`Voice.pitch_control`);
asking one that cannot is an error, and `export.augment.pitch_shift` does it on the waveform instead.

Debian packages (bookworm, main):
    apt-get install -y --no-install-recommends espeak-ng flite festival festvox-kallpc16k \\
        festvox-kdlpc16k festvox-us-slt-hts festlex-cmu festlex-poslex
and from contrib/non-free (docs/speech_data.md; the accented MBROLA talkers only to rerun run mb8):
    apt-get install -y --no-install-recommends mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils
"""

from __future__ import annotations

import argparse
import ctypes.util
import functools
import hashlib
import json
import logging
import re
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_stream.audio import read_wav, write_wav
from export import speech_data as sd
from export.speech_data import SAMPLE_RATE, SpeechSet, transcript

log = logging.getLogger("export.synth")

APT_INSTALL = ("apt-get install -y --no-install-recommends espeak-ng flite festival festvox-kallpc16k "
               "festvox-kdlpc16k festvox-us-slt-hts festlex-cmu festlex-poslex")
CACHE_DIR = Path(".cache/synth")
DATA_VERSION = 2  # part of the cache key: bump when engines, voices or the split change
PAD_S = 0.05  # silence kept either side of the trimmed speech, in seconds


class SynthError(RuntimeError):
    """An engine or voice is missing, or an engine failed on a text. The message names both."""


WordSpans = list[tuple[str, int, int]]  # (word, start sample, end sample) at 16 kHz, transcript order


@dataclass(frozen=True)
class Synthesis:
    audio: np.ndarray  # [n] int16, 16 kHz mono, trimmed to speech plus PAD_S either side
    word_spans: WordSpans | None  # None where the engine gave no usable word times


@dataclass(frozen=True)
class Voice:
    """One voice of one engine and its role in the proposed split."""

    engine: str
    name: str
    split: str  # "train" | "eval" (held-out voice of a training engine) | "heldout-engine" | "extra" (never drawn)
    pitch_control: bool = True
    note: str = ""

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


# -- shared post-processing ---------------------------------------------------------------------

def _to_16k(pcm: np.ndarray, rate_hz: int) -> np.ndarray:
    """float32 at 16 kHz from int16 at rate_hz (speech_data's FFT resampler; silence-padded first)."""
    x = pcm.astype(np.float32) / 32768.0
    if rate_hz == SAMPLE_RATE:
        return x
    pad = rate_hz // 10  # keeps the FFT's wrap-around in silence; removed again below
    y = sd.resample(np.pad(x, pad), rate_hz, SAMPLE_RATE)
    cut = round(pad * SAMPLE_RATE / rate_hz)
    return y[cut:len(y) - cut]


def _finish(audio: np.ndarray, times_s: list[tuple[str, float, float]] | None, text: str,
            engine: str, voice: str) -> Synthesis:
    """Trim to speech (keeping PAD_S), turn word times in seconds into sample spans, check the words."""
    loud = sd._loud_mask(audio)  # 5 ms frames above 1% of the peak
    idx = np.flatnonzero(loud)
    if len(idx) == 0:
        raise SynthError(f"{engine}:{voice} produced silence for {text!r}")
    pad = int(PAD_S * SAMPLE_RATE)
    first, last = max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, len(audio))
    clipped = audio[first:last]
    pcm = np.clip(np.round(clipped * 32768.0), -32768, 32767).astype(np.int16)
    spans = None
    words = transcript(text).split()
    if times_s is not None and [w for w, _, _ in times_s] == words:
        spans = [(w, int(np.clip(round(s * SAMPLE_RATE) - first, 0, len(pcm))),
                  int(np.clip(round(e * SAMPLE_RATE) - first, 0, len(pcm)))) for w, s, e in times_s]
    elif times_s is not None:
        log.warning("%s:%s: word times %s do not match the transcript %s; dropped",
                    engine, voice, [w for w, _, _ in times_s], words)
    return Synthesis(pcm, spans)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, **kw)
    except FileNotFoundError:
        raise SynthError(f"{what}: {cmd[0]} not installed ({APT_INSTALL})") from None
    except subprocess.CalledProcessError as exc:
        raise SynthError(f"{what}: {cmd[0]} exited {exc.returncode}: {exc.stderr.strip()[-400:]}") from None


# -- espeak-ng ----------------------------------------------------------------------------------

class EspeakEngine:
    """libespeak-ng in process (speech_data.Espeak): word starts from the library, ends from energy."""

    name = "espeak-ng"
    DEFAULT_WPM = 175  # espeak-ng's default speaking rate
    PITCH_PER_SEMITONE = 6.0  # measured: pitch 20/50/80 gives 78/101/138 Hz median F0 on en-us

    def __init__(self):
        self._espeak = None

    def available(self) -> bool:
        return bool(ctypes.util.find_library("espeak-ng"))

    def voice_names(self) -> tuple[str, ...]:
        return sd.TRAIN_VOICES + sd.HELDOUT_VOICES

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        if self._espeak is None:
            try:
                self._espeak = sd.Espeak()
            except SystemExit as exc:  # speech_data exits with an install hint; here it is an error
                raise SynthError(f"espeak-ng: {exc}") from None
        spec = sd.UtteranceSpec(text, voice, *_espeak_settings(rate, pitch_st))
        try:
            utt = sd.synthesize(self._espeak, spec)
        except ValueError as exc:
            raise SynthError(f"espeak-ng:{voice}: {exc}") from None
        # speech_data trims exactly at the speech; pad like the other engines and shift the spans
        pad = int(PAD_S * SAMPLE_RATE)
        audio = np.pad(utt.audio, pad)
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
        return Synthesis(pcm, [(w, s + pad, e + pad) for w, s, e in utt.word_spans])

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        return [_try(self.synthesize, *it) for it in items]


def _espeak_settings(rate: float, pitch_st: float) -> tuple[int, int]:
    """espeak-ng's words per minute and pitch (0-99) for a rate factor and a shift in semitones."""
    return (int(np.clip(round(EspeakEngine.DEFAULT_WPM * rate), 80, 450)),
            int(np.clip(round(50 + EspeakEngine.PITCH_PER_SEMITONE * pitch_st), 0, 99)))


# -- flite --------------------------------------------------------------------------------------

class FliteEngine:
    """The flite CLI. Word spans: phone end times (-psdur) split by each word's phone count."""

    name = "flite"
    # awb_time is a limited-domain voice that can only say the time of day
    VOICES = ("kal", "kal16", "awb", "rms", "slt")
    NO_PITCH = ("rms",)  # measured: neither f0_shift nor int_f0_target_mean moves rms's F0

    def available(self) -> bool:
        return shutil.which("flite") is not None

    def voice_names(self) -> tuple[str, ...]:
        return _flite_voices()

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        if voice not in self.voice_names():
            raise SynthError(f"flite has no voice {voice!r}; it has {', '.join(self.voice_names())}")
        if pitch_st and voice in self.NO_PITCH:
            raise SynthError(f"flite:{voice} cannot shift pitch (asked {pitch_st:+.1f} semitones); "
                             "use export.augment.pitch_shift")
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            out = _run(["flite", "-voice", voice, "-psdur", "--setf", f"duration_stretch={1.0 / rate:.4f}",
                        "--setf", f"f0_shift={2.0 ** (pitch_st / 12):.4f}", "-t", text, "-o", str(wav)],
                       f"flite:{voice}").stdout
            pcm, rate_hz = read_wav(wav)
        return _finish(_to_16k(pcm, rate_hz), self._word_times(out, text, voice), text, self.name, voice)

    def _word_times(self, psdur: str, text: str, voice: str) -> list[tuple[str, float, float]] | None:
        phones = [(p.rsplit(":", 1)[0], float(p.rsplit(":", 1)[1])) for p in psdur.split() if ":" in p]
        starts = [0.0] + [t for _, t in phones[:-1]]
        spoken = [(s, e) for (p, e), s in zip(phones, starts) if p != "pau"]
        words = transcript(text).split()
        counts = [_flite_phone_count(voice, w) for w in words]
        if sum(counts) != len(spoken):  # post-lexical rules changed a count: no trustworthy split
            log.warning("flite:%s: %d phones in %r, %d from its words; no word times", voice, len(spoken),
                        text, sum(counts))
            return None
        ends = np.cumsum(counts)
        return [(w, spoken[e - c][0], spoken[e - 1][1]) for w, c, e in zip(words, counts, ends)]

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        return [_try(self.synthesize, *it) for it in items]


@functools.cache
def _flite_voices() -> tuple[str, ...]:
    listed = _run(["flite", "-lv"], "flite -lv").stdout.split(":", 1)[-1].split()
    return tuple(v for v in FliteEngine.VOICES if v in listed)


@functools.lru_cache(maxsize=4096)
def _flite_phone_count(voice: str, word: str) -> int:
    """Phones of `word` said alone (pauses excluded): how many of an utterance's phones are its own."""
    phones = _run(["flite", "-voice", voice, "-ps", "-t", word, "none"], f"flite:{voice}").stdout.split()
    return sum(p != "pau" for p in phones)


# -- mbrola -------------------------------------------------------------------------------------

ACCENTED_MBROLA = {"de1": "German female", "de2": "German male", "de3": "German female", "de4": "German male",
                   "de5": "German female", "fr1": "French male", "fr4": "French female", "nl2": "Dutch male",
                   "af1": "Afrikaans male", "hu1": "Hungarian female", "pl1": "Polish female",
                   "sw1": "Swedish male", "sw2": "Swedish female", "ro1": "Romanian male", "gr2": "Greek male"}


class MbrolaEngine:
    """MBROLA diphone voices driven by espeak-ng's front end: `espeak-ng --pho` writes the phones
    with their durations and pitch, the `mbrola` CLI renders exactly those durations, so word spans
    are the phone times split by phone counts (`_word_times`), as for flite. Diphone concatenation
    of recorded speech: the nearest thing Debian has to a recorded voice, and a different synthesis
    method from every other training engine."""

    name = "mbrola"
    # US female, US male, US male, British male; then other languages' diphones speaking English
    # through espeak-ng's mb-XX-en voices: accented talkers, seven of them female (not drawn: _MBROLA_SPLIT)
    VOICES = ("us1", "us2", "us3", "en1") + tuple(f"{v}-en" for v in ACCENTED_MBROLA)

    def available(self) -> bool:
        return shutil.which("mbrola") is not None and shutil.which("espeak-ng") is not None

    def voice_names(self) -> tuple[str, ...]:
        return tuple(v for v in self.VOICES if _mbrola_db(v).is_file())

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        if voice not in self.VOICES or not _mbrola_db(voice).is_file():
            raise SynthError(f"mbrola has no voice {voice!r} installed ({MBROLA_APT})")
        wpm, pitch = _espeak_settings(rate, pitch_st)  # espeak-ng's prosody drives the diphones
        pho = _run(["espeak-ng", "-q", "--pho", "-v", f"mb-{voice}", "-s", str(wpm), "-p", str(pitch), text],
                   f"mbrola:{voice}").stdout
        with tempfile.TemporaryDirectory() as tmp:
            pho_path, wav = Path(tmp) / "in.pho", Path(tmp) / "out.wav"
            pho_path.write_text(f"_ {PAD_S * 1000:.0f}\n" + pho)  # the others' leading silence
            _run(["mbrola", "-e", str(_mbrola_db(voice)), str(pho_path), str(wav)], f"mbrola:{voice}")
            pcm, rate_hz = read_wav(wav)
        return _finish(_to_16k(pcm, rate_hz), self._word_times(pho, text, voice), text, self.name, voice)

    def _word_times(self, pho: str, text: str, voice: str) -> list[tuple[str, float, float]] | None:
        """Word k ends after the phones of the phrase's first k + 1 words said alone: counting in
        context keeps cross-word rules (a linking r, a reduced "a") in the count, which word-by-word
        counts miss. At worst such a phone lands in the next word."""
        spoken, t = [], PAD_S
        for phone, ms in _pho_phones(pho):
            if phone != "_":
                spoken.append((t, t + ms / 1000.0))
            t += ms / 1000.0
        words = transcript(text).split()
        if len(spoken) < len(words):
            log.warning("mbrola:%s: %d phones for %d words in %r; no word times", voice, len(spoken), len(words), text)
            return None
        ends = [_mbrola_phone_count(voice, " ".join(words[:k + 1])) for k in range(len(words) - 1)] + [len(spoken)]
        times, start = [], 0
        for k, (w, end) in enumerate(zip(words, ends)):
            end = min(max(end, start + 1), len(spoken) - (len(words) - 1 - k))  # at least one phone per word
            times.append((w, spoken[start][0], spoken[end - 1][1]))
            start = end
        return times

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        return [_try(self.synthesize, *it) for it in items]


MBROLA_APT = ("add contrib and non-free to apt's sources, then apt-get install -y --no-install-recommends "
              "mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils (docs/speech_data.md)")


def _mbrola_db(voice: str) -> Path:
    """The diphone database of a voice: "us1", or "de1-en" (German diphones speaking English)."""
    db = voice.split("-")[0]
    return Path("/usr/share/mbrola") / db / db


def _pho_phones(pho: str) -> list[tuple[str, float]]:
    """(phone, duration ms) of a .pho text; comments (;) and blank lines skipped."""
    out = []
    for line in pho.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith(";"):
            out.append((parts[0], float(parts[1])))
    return out


@functools.lru_cache(maxsize=8192)
def _mbrola_phone_count(voice: str, words: str) -> int:
    """Phones of `words` said by the voice (pauses excluded)."""
    pho = _run(["espeak-ng", "-q", "--pho", "-v", f"mb-{voice}", words], f"mbrola:{voice}").stdout
    return sum(p != "_" for p, _ in _pho_phones(pho))


# -- svox pico ---------------------------------------------------------------------------------

class PicoEngine:
    """SVOX Pico (`pico2wave`, Debian non-free), the phone-era synthesizer of Android: unit-selection
    style voices from recordings, closer to a recorded speaker than anything that trains. Held out
    entirely, a second synthesizer beside festival the recognizer never hears in training.

    Pico reports no timings. A word's end is taken as the length of the speech of the phrase's first
    words said alone, as written, commas included (one extra call per word); the phrase-final
    lengthening of such a prefix puts ends up to about 100 ms late. Evaluation uses spans only for
    stop latency, which it therefore reports for pico as approximate."""

    name = "pico"
    VOICES = ("en-US", "en-GB")

    def available(self) -> bool:
        return shutil.which("pico2wave") is not None

    def voice_names(self) -> tuple[str, ...]:
        return self.VOICES if self.available() else ()

    def _speech(self, text: str, voice: str, rate: float, pitch_st: float) -> np.ndarray:
        if voice not in self.VOICES:
            raise SynthError(f"pico has no voice {voice!r}; it has {', '.join(self.VOICES)}")
        markup = (f'<speed level="{round(100 * rate)}"><pitch level="{round(100 * 2 ** (pitch_st / 12))}">'
                  f"{text}</pitch></speed>")
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            _run(["pico2wave", "-l", voice, "-w", str(wav), markup], f"pico:{voice}")
            pcm, rate_hz = read_wav(wav)
        return _to_16k(pcm, rate_hz)

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        audio = self._speech(text, voice, rate, pitch_st)
        loud = np.flatnonzero(sd._loud_mask(audio))
        if len(loud) == 0:
            raise SynthError(f"pico:{voice} produced silence for {text!r}")
        first, last = int(loud[0]) / SAMPLE_RATE, (int(loud[-1]) + 1) / SAMPLE_RATE
        words = transcript(text).split()
        # prefixes of the text as written, so a comma's pause inside a prefix is in its length
        written = text.split() if len(text.split()) == len(words) else words
        ends = []
        for k in range(1, len(words)):
            prefix = self._speech(" ".join(written[:k]), voice, rate, pitch_st)
            mask = np.flatnonzero(sd._loud_mask(prefix))
            ends.append(first + (int(mask[-1]) + 1 - int(mask[0])) / SAMPLE_RATE if len(mask) else first)
        ends = list(np.minimum(np.maximum.accumulate(ends), last - 0.01 * np.arange(len(ends), 0, -1))) + [last]
        times = [(w, s, e) for w, s, e in zip(words, [first] + ends[:-1], ends)]
        return _finish(audio, times, text, self.name, voice)

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        return [_try(self.synthesize, *it) for it in items]


# -- festival -----------------------------------------------------------------------------------

_FESTIVAL_SCM = """
(define (es_word_times u)
  (mapcar (lambda (w)
            (format t "W %s %f %f\\n" (item.name w)
                    (item.feat w "R:SylStructure.daughter1.daughter1.segment_start")
                    (item.feat w "R:SylStructure.daughtern.daughtern.segment_end")))
          (utt.relation.items u 'Word)))
(define (es_say voice path text stretch pitch_factor speed)
  (Parameter.set 'Duration_Stretch 1.0)
  (eval (list voice))
  ;; diphone voices: Duration_Stretch and the intonation target; HTS: the engine's own rate "-r"
  (Parameter.set 'Duration_Stretch (* stretch (Parameter.get 'Duration_Stretch)))
  (if (assoc 'target_f0_mean int_lr_params)
      (set! int_lr_params
            (cons (list 'target_f0_mean (* pitch_factor (cadr (assoc 'target_f0_mean int_lr_params))))
                  (cons (list 'target_f0_std (* pitch_factor (cadr (assoc 'target_f0_std int_lr_params))))
                        int_lr_params))))
  (if (string-equal (Parameter.get 'Synth_Method) "HTS")
      (set! hts_engine_params (append hts_engine_params (list (list "-r" speed)))))
  (set! u (utt.synth (eval (list 'Utterance 'Text text))))  ; Utterance does not evaluate its arguments
  (utt.save.wave u path 'riff)
  (format t "U %s\\n" path)
  (es_word_times u))
"""


class FestivalEngine:
    """festival --batch on a generated script; one process per synthesize_many call."""

    name = "festival"
    # English voices in Debian bookworm main: kallpc16k, kdlpc16k (diphone), us-slt-hts
    VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
    NO_PITCH = ("cmu_us_slt_arctic_hts",)  # its F0 comes from the HTS model; the "-fm" option is ignored

    def available(self) -> bool:
        return shutil.which("festival") is not None

    def voice_names(self) -> tuple[str, ...]:
        return _festival_voices()

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        return _one(self, text, voice, rate, pitch_st)

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        """[(text, voice, rate, pitch_st)] -> a Synthesis or a SynthError for each, in one process."""
        if not items:  # festival takes ~0.7 s to start: not for a chunk that has none of its voices
            return []
        results: list[Synthesis | SynthError | None] = [None] * len(items)
        with tempfile.TemporaryDirectory() as tmp:
            lines = [_FESTIVAL_SCM]
            for i, (text, voice, rate, pitch_st) in enumerate(items):
                if voice not in self.voice_names():
                    results[i] = SynthError(f"festival has no voice {voice!r}; it has "
                                            f"{', '.join(self.voice_names())} ({APT_INSTALL})")
                elif pitch_st and voice in self.NO_PITCH:
                    results[i] = SynthError(f"festival:{voice} cannot shift pitch (asked {pitch_st:+.1f} "
                                            "semitones); use export.augment.pitch_shift")
                else:
                    lines.append(f'(es_say \'voice_{voice} "{tmp}/{i}.wav" {_scheme_str(text)} {1.0 / rate:.4f} '
                                 f'{2.0 ** (pitch_st / 12):.4f} {rate:.4f})')
            script = Path(tmp) / "run.scm"
            script.write_text("\n".join(lines) + "\n")
            out = _run(["festival", "--batch", str(script)], "festival").stdout
            times = _parse_festival(out)
            for i, (text, voice, _, _) in enumerate(items):
                if results[i] is not None:
                    continue
                wav = Path(tmp) / f"{i}.wav"
                if not wav.is_file():
                    results[i] = SynthError(f"festival:{voice} wrote no audio for {text!r}")
                    continue
                pcm, rate_hz = read_wav(wav)
                results[i] = _try(_finish, _to_16k(pcm, rate_hz), times.get(str(wav)), text, self.name, voice)
        return results


@functools.cache
def _festival_voices() -> tuple[str, ...]:
    out = _run(["festival", "--batch", "(print (voice.list))"], "festival voice.list").stdout
    listed = out.replace("(", " ").replace(")", " ").split()
    return tuple(v for v in FestivalEngine.VOICES if v in listed)


def _scheme_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_festival(out: str) -> dict[str, list[tuple[str, float, float]]]:
    """{wav path: [(word, start s, end s)]} from the script's U/W lines. Festival splits "let's" into
    "let" and "'s" (no segments): a token starting with an apostrophe joins the word before it."""
    times: dict[str, list[tuple[str, float, float]]] = {}
    words = None
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["U"]:
            words = times.setdefault(parts[1], [])
        elif parts[:1] == ["W"] and words is not None and len(parts) == 4:
            w, s, e = parts[1].lower(), float(parts[2]), float(parts[3])
            if w.startswith("'") and words:
                words[-1] = (words[-1][0] + w, words[-1][1], words[-1][2])
            else:
                words.append((w, s, e))
    return times


# -- GnuSpeech ----------------------------------------------------------------------------------

GNUSPEECH_DIR = Path(__file__).parent / "gnuspeech"  # package.json, its lock file and say.mjs
# (vocal tract cm, glottal pulse tp %, tn %, reference pitch st, breathiness %) of the package's presets
_GNUSPEECH_PRESETS = {"male": (17.5, 40.0, 24.0, -12.0, 0.5), "female": (15.0, 40.0, 32.0, 0.0, 1.5),
                      "large_child": (12.5, 40.0, 24.0, 2.5, 1.5), "small_child": (10.0, 40.0, 24.0, 5.0, 1.5)}
GNUSPEECH_TRAIN_VOICES = 48


def gnuspeech_voice(name: str) -> dict:
    """The tube-model parameters of a GnuSpeech voice: one of the package's presets (held out), or
    `gNN`, a training talker drawn from NN: tract length 12-19 cm with a pitch that follows it (the
    presets' line, +-4 st), breathiness, glottal pulse shape, mouth and nose radii."""
    if name in _GNUSPEECH_PRESETS:
        tract, tp, tn, pitch, breath = _GNUSPEECH_PRESETS[name]
        return {"vocal_tract_length": tract, "glottal_pulse_tp": tp, "glottal_pulse_tn": tn,
                "reference_glottal_pitch": pitch, "breathiness": breath, "global_radius_coef": 1.0, "nose_coef": 1.0}
    if not (name.startswith("g") and name[1:].isdigit() and int(name[1:]) < GNUSPEECH_TRAIN_VOICES):
        raise SynthError(f"gnuspeech has no voice {name!r}: presets {', '.join(_GNUSPEECH_PRESETS)} "
                         f"or g00-g{GNUSPEECH_TRAIN_VOICES - 1:02d}")
    rng = np.random.default_rng([7, int(name[1:])])
    tract = float(rng.uniform(12.0, 19.0))
    return {"vocal_tract_length": round(tract, 2),
            "reference_glottal_pitch": round(float(np.clip(-12.0 + 4.8 * (17.5 - tract) + rng.uniform(-4, 4), -16, 8)), 1),
            "breathiness": round(float(rng.uniform(0.3, 3.0)), 2),
            "glottal_pulse_tp": round(float(rng.uniform(32, 48)), 1),
            "glottal_pulse_tn": round(float(rng.uniform(18, 36)), 1),
            "global_radius_coef": round(float(rng.uniform(0.9, 1.1)), 3),
            "nose_coef": round(float(rng.uniform(0.85, 1.15)), 3)}


class GnuSpeechEngine:
    """GnuSpeech, an articulatory synthesizer (a tube model of the vocal tract driven by posture
    rules), through its WebAssembly build from the npm registry run by node (`gnuspeech/say.mjs`,
    one process per synthesize_many). Why: its voices are continuous parameters (tract length,
    glottal pulse, breathiness, radii), so it gives many talkers of a synthesis method no other
    engine here uses. Word spans: each word's postures, from their onsets in the debug output."""

    name = "gnuspeech"
    VOICES = tuple(_GNUSPEECH_PRESETS) + tuple(f"g{i:02d}" for i in range(GNUSPEECH_TRAIN_VOICES))

    def available(self) -> bool:
        return shutil.which("node") is not None and shutil.which("npm") is not None

    def voice_names(self) -> tuple[str, ...]:
        return self.VOICES

    def synthesize(self, text: str, voice: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
        return _one(self, text, voice, rate, pitch_st)

    def _install(self) -> None:
        if not (GNUSPEECH_DIR / "node_modules" / "@echogarden" / "gnuspeech-wasm").is_dir():
            log.info("installing GnuSpeech (npm ci in %s)", GNUSPEECH_DIR)
            _run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(GNUSPEECH_DIR)], "npm ci (gnuspeech)")

    def synthesize_many(self, items) -> list[Synthesis | SynthError]:
        if not items:
            return []
        self._install()
        results: list[Synthesis | SynthError | None] = [None] * len(items)
        with tempfile.TemporaryDirectory() as tmp:
            jobs = []
            for i, (text, voice, rate, pitch_st) in enumerate(items):
                try:
                    params = gnuspeech_voice(voice)
                except SynthError as exc:
                    results[i] = exc
                    continue
                jobs.append((i, {"text": text, "out": f"{tmp}/{i}.wav", "voice": params,
                                 "tempo": round(rate, 4), "pitch_offset": round(-4.0 + pitch_st, 2)}))
            out = _run(["node", str(GNUSPEECH_DIR / "say.mjs")], "gnuspeech",
                       input="".join(json.dumps(j) + "\n" for _, j in jobs)).stdout.splitlines()
            for (i, job), line in zip(jobs, out):
                r = json.loads(line)
                text, voice = items[i][0], items[i][1]
                if "error" in r:
                    results[i] = SynthError(f"gnuspeech:{voice}: {r['error']} for {text!r}")
                    continue
                pcm, rate_hz = read_wav(Path(r["out"]))
                results[i] = _try(_finish, _to_16k(pcm, rate_hz), _gnuspeech_word_times(r, text, voice), text,
                                  self.name, voice)
        return [r if r is not None else SynthError("gnuspeech: no result") for r in results]


def _gnuspeech_word_times(r: dict, text: str, voice: str) -> list[tuple[str, float, float]] | None:
    """Each word's (start, end) in seconds from its postures: the phonetic string marks words with
    /w and separates phones with _ and .; the postures (pauses ^ and # aside) are those phones in
    order, each with an onset. A word ends at the first later onset (two postures can share one)."""
    words = transcript(text).split()
    phones = []
    for part in r["stream"].split("/w")[1:]:
        part = part.split("#")[0]  # a tone group's end
        part = re.sub(r"/.|\\0|<end>", " ", part)  # markers: a slash and one character
        phones.append([p for p in re.split(r"[_.\s]+", part) if p])
    phones_per_word = [len(p) for p in phones]
    # the rules insert postures the phonetic string lacks: glottal transitions (qz, qc, ...) and a
    # glottal stop (gs) before a vowel
    inserted = tuple(m for m in ("q", "gs") if not any(p.startswith(m) for ps in phones for p in ps))
    postures = [(sym.rstrip("'"), ms / 1000.0) for sym, ms in r["postures"]]
    spoken = [(i, t) for i, (sym, t) in enumerate(postures)
              if sym not in ("^", "#") and not (inserted and sym.startswith(inserted))]
    if len(phones_per_word) != len(words) or sum(phones_per_word) != len(spoken):
        log.warning("gnuspeech:%s: %d phones in %d words, %d postures for %r; no word times", voice,
                    sum(phones_per_word), len(phones_per_word), len(spoken), text)
        return None
    times, k = [], 0
    for w, n in zip(words, phones_per_word):
        first, last = spoken[k], spoken[k + n - 1]
        later = [t for _, t in postures[last[0] + 1:] if t > last[1]]
        times.append((w, first[1], later[0] if later else last[1] + 0.08))
        k += n
    return times


def _one(engine, text: str, voice: str, rate: float, pitch_st: float) -> Synthesis:
    """One text through an engine whose verb is synthesize_many (one process per call)."""
    result = engine.synthesize_many([(text, voice, rate, pitch_st)])[0]
    if isinstance(result, SynthError):
        raise result
    return result


def _try(fn, *args):
    try:
        return fn(*args)
    except SynthError as exc:
        return exc


# -- registry and split -------------------------------------------------------------------------

ENGINES = {e.name: e for e in (EspeakEngine(), FliteEngine(), FestivalEngine(), GnuSpeechEngine(), MbrolaEngine(),
                                               PicoEngine())}
HELDOUT_ENGINE = "festival"

# Why festival is held out entirely: its three voices use two synthesis methods (residual-LPC
# diphones, HTS statistical parametric) and its own front end (tokenizer, CART phrasing and
# intonation), none of them espeak-ng's formant synthesis; it is also the slow engine (0.7 s
# start-up), which matters for thousands of training utterances and not for a few hundred
# evaluation ones. Flite, the fast one, trains. Flite shares recordings with festival: its kal and
# kal16 use the same kal diphone database as festival's kal_diphone, and its slt the same speaker
# (CMU ARCTIC slt) as festival's HTS voice. Those three flite voices are held out as flite's own
# evaluation voices, so nothing in training was recorded by a festival speaker.
_FLITE_SPLIT = {"awb": "train", "rms": "train", "kal": "eval", "kal16": "eval", "slt": "eval"}
_FLITE_NOTES = {"kal": "same diphone database as festival kal_diphone", "kal16": "kal at 16 kHz",
                "slt": "same speaker as festival cmu_us_slt_arctic_hts", "awb": "Scottish English male",
                "rms": "US male; no pitch control"}

# MBROLA: three voices train, us3 (a second US male) is its held-out voice.
# The accented talkers are registered but never drawn ("extra"): run mb8 trained on them and they
# did not help (docs/training/experiment-speech-embedding.md).
_MBROLA_SPLIT = {"us1": "train", "us2": "train", "en1": "train", "us3": "eval",
                 **{f"{v}-en": "extra" for v in ACCENTED_MBROLA}}
_MBROLA_NOTES = {"us1": "US female", "us2": "US male", "us3": "US male", "en1": "British male",
                 **{f"{v}-en": f"{who}, accented English" for v, who in ACCENTED_MBROLA.items()}}

VOICES: tuple[Voice, ...] = tuple(
    [Voice("espeak-ng", v, "train") for v in sd.TRAIN_VOICES]
    + [Voice("espeak-ng", v, "eval", note="speech_data held-out accent or variant") for v in sd.HELDOUT_VOICES]
    + [Voice("flite", v, _FLITE_SPLIT[v], v not in FliteEngine.NO_PITCH, _FLITE_NOTES[v])
       for v in FliteEngine.VOICES]
    + [Voice("festival", v, "heldout-engine", v not in FestivalEngine.NO_PITCH) for v in FestivalEngine.VOICES]
    + [Voice("gnuspeech", v, "eval", note="the package's preset") for v in _GNUSPEECH_PRESETS]
    + [Voice("gnuspeech", f"g{i:02d}", "train") for i in range(GNUSPEECH_TRAIN_VOICES)]
    + [Voice("mbrola", v, _MBROLA_SPLIT[v], note=_MBROLA_NOTES[v]) for v in MbrolaEngine.VOICES]
    + [Voice("pico", v, "heldout-engine", note="word ends approximate") for v in PicoEngine.VOICES])


def voices(split: str | None = None, engine: str | None = None) -> tuple[Voice, ...]:
    """Registered voices, optionally of one split and/or one engine."""
    return tuple(v for v in VOICES if (split is None or v.split == split) and (engine is None or v.engine == engine))


def synthesize(voice: Voice, text: str, rate: float = 1.0, pitch_st: float = 0.0) -> Synthesis:
    """16 kHz int16 speech of `text` by `voice`, trimmed to speech plus PAD_S, with word spans or None."""
    engine = ENGINES.get(voice.engine)
    if engine is None:
        raise SynthError(f"unknown engine {voice.engine!r}; engines: {', '.join(ENGINES)}")
    if not engine.available():
        raise SynthError(f"{voice.engine} is not installed: {APT_INSTALL}")
    if pitch_st and not voice.pitch_control:
        raise SynthError(f"{voice} cannot shift pitch (asked {pitch_st:+.1f} semitones)")
    return engine.synthesize(text, voice.name, rate, pitch_st)


# -- cached multi-engine sets (speech_data's layout, so its SpeechSet and trainers read them) -----

@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines one utterance of any engine."""

    text: str
    engine: str
    voice: str
    rate: float  # speaking-rate factor, 1 = the voice's default
    pitch_st: float  # F0 shift in semitones
    kind: str = "command"  # "command" (speech_data.make_phrase) | "other" (speech_data.other_sentence)

    @property
    def voice_id(self) -> str:
        return f"{self.engine}:{self.voice}"


TRAIN_ENGINE_WEIGHTS = {"espeak-ng": 0.5, "flite": 0.5}  # by utterance, before any pitch/rate spread
KINDS = ("command", "other")


def random_spec(rng: np.random.Generator, split: str, engine: str | None = None, other_p: float = 0.0) -> SynthSpec:
    """A phrase for a random voice of `split` (of `engine` only, if given), rate 0.8-1.25, pitch +-4 st:
    a non-command sentence (speech_data.other_sentence) with probability `other_p`, else a command
    (speech_data.make_phrase)."""
    pool = voices(split, engine)
    if not pool:
        raise SynthError(f"no {engine or 'any'} voice in split {split!r}")
    engines = sorted({v.engine for v in pool})
    if split == "train" and len(engines) > 1:
        w = np.array([TRAIN_ENGINE_WEIGHTS.get(e, 0.0) for e in engines])
        engine = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    else:
        engine = engines[int(rng.integers(len(engines)))]
    of_engine = [v for v in pool if v.engine == engine]
    voice = of_engine[int(rng.integers(len(of_engine)))]
    rate = float(np.round(np.exp(rng.uniform(np.log(0.8), np.log(1.25))), 3))
    pitch = float(np.round(rng.uniform(-4, 4), 1)) if voice.pitch_control else 0.0
    kind = "other" if other_p and rng.random() < other_p else "command"
    text = sd.other_sentence(rng, "train" if split == "train" else "heldout") if kind == "other" else sd.make_phrase(rng)
    return SynthSpec(text, voice.engine, voice.name, rate, pitch, kind)


def _synth_chunk(specs: list[SynthSpec]) -> list[tuple[SynthSpec, Synthesis] | None]:
    """One worker's share, grouped by engine so festival runs one process per chunk."""
    out: list = [None] * len(specs)
    for name, engine in ENGINES.items():
        idx = [i for i, s in enumerate(specs) if s.engine == name]
        for i, r in zip(idx, engine.synthesize_many([(specs[i].text, specs[i].voice, specs[i].rate,
                                                      specs[i].pitch_st) for i in idx])):
            if isinstance(r, SynthError) or r.word_spans is None:
                log.warning("skipped %s: %s", specs[i], r if isinstance(r, SynthError) else "no word times")
            else:
                out[i] = (specs[i], r)
    return out


def build_set(split: str, n: int, seed: int, workers: int = 2, chunk: int = 50, engine: str | None = None,
              other_p: float = 0.0) -> SpeechSet:
    """`n` utterances of `split` ('train', 'eval', 'heldout-engine') from `seed`, of one `engine` or all
    of the split's, a share `other_p` of them non-command sentences; same arguments, same set.
    Utterances an engine fails on, or without word spans, are dropped (the same ones every run)."""
    rng = np.random.default_rng([seed, ("train", "eval", "heldout-engine").index(split)])
    specs = [random_spec(rng, split, engine, other_p) for _ in range(n)]
    chunks = [specs[i:i + chunk] for i in range(0, n, chunk)]
    t0 = time.time()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        done = [u for part in pool.imap(_synth_chunk, chunks) for u in part if u is not None]
    log.info("%s%s: synthesized %d of %d utterances in %.0f s (%.2f h of speech)", split,
             f" ({engine})" if engine else "", len(done), n, time.time() - t0,
             sum(len(s.audio) for _, s in done) / SAMPLE_RATE / 3600)
    return SpeechSet.of_clips([sp for sp, _ in done], [s.audio for _, s in done], [s.word_spans for _, s in done])


def cache_path(split: str, n: int, seed: int, engine: str | None = None, other_p: float = 0.0) -> Path:
    drawn = [v for v in voices(split, engine) if engine or split != "train" or TRAIN_ENGINE_WEIGHTS.get(v.engine)]
    key = hashlib.sha256(json.dumps([DATA_VERSION, split, n, seed, [str(v) + v.split for v in drawn],
                                     sd.DATA_VERSION, engine, other_p, sd.phrase_source_key()]).encode())
    tag = f"{split}-{engine}" if engine else split
    return CACHE_DIR / f"{tag}-{n}-{seed}-{key.hexdigest()[:10]}.npz"


def load_set(split: str, n: int, seed: int = 0, engine: str | None = None, other_p: float = 0.0) -> SpeechSet:
    """The cached set (clean 16 kHz int16, speech_data's layout), synthesized on first use."""
    path = cache_path(split, n, seed, engine, other_p)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return SpeechSet([SynthSpec(**s) for s in meta["specs"]], z["audio"], z["offsets"],
                         [[tuple(w) for w in ws] for ws in meta["word_spans"]])
    data = build_set(split, n, seed, engine=engine, other_p=other_p)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"specs": [s.__dict__ for s in data.specs], "word_spans": data.word_spans}
    np.savez(path, audio=data.audio, offsets=data.offsets, meta=json.dumps(meta))
    log.info("cached %s", path)
    return data


# -- listening proxies --------------------------------------------------------------------------

def median_f0_hz(audio: np.ndarray) -> float:
    """Median F0 of voiced 40 ms frames by autocorrelation (60-400 Hz): a check that pitch moved."""
    x = audio.astype(np.float64)
    frame, hop = 640, 160
    if len(x) < frame:
        return float("nan")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]  # [n_frames, frame]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames ** 2).sum(axis=1)
    frames = frames[energy > 0.05 * energy.max()]
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]  # [n_frames, lag]
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    lag = lo + ac[:, lo:hi].argmax(axis=1)
    voiced = ac[np.arange(len(ac)), lag] > 0.4 * ac[:, 0]
    return float(np.median(SAMPLE_RATE / lag[voiced])) if voiced.any() else float("nan")


def check(s: Synthesis, text: str) -> list[str]:
    """Problems a listener would hear: implausible duration or level, word times outside the audio."""
    n_words = len(transcript(text).split())
    dur_s = len(s.audio) / SAMPLE_RATE
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean((s.audio / 32768.0) ** 2)) + 1e-12)
    problems = []
    if not 0.12 * n_words <= dur_s <= 1.2 * n_words + 0.5:
        problems.append(f"duration {dur_s:.2f} s for {n_words} words")
    if not -45 <= rms_dbfs <= -3:
        problems.append(f"RMS {rms_dbfs:.1f} dBFS")
    if s.word_spans is not None:
        starts = [a for _, a, _ in s.word_spans]
        if not all(0 <= a < b <= len(s.audio) for _, a, b in s.word_spans) or starts != sorted(starts):
            problems.append(f"word spans {s.word_spans} outside or out of order in {len(s.audio)} samples")
    return problems


# -- CLI ----------------------------------------------------------------------------------------

DEMO_TEXTS = ("turn left ninety degrees", "don't move, let's go back two meters", "stop")


def list_voices() -> None:
    for name, engine in ENGINES.items():
        installed = engine.available()
        found = engine.voice_names() if installed and name != "espeak-ng" else ()
        print(f"{name}: {'installed' if installed else 'NOT INSTALLED'}")
        for split in ("train", "eval", "heldout-engine", "extra"):
            vs = voices(split, name)
            if vs:
                missing = [v.name for v in vs if found and v.name not in found]
                shown = ", ".join(v.name + ("" if v.pitch_control else " (no pitch)") for v in vs[:12])
                more = f" ... (+{len(vs) - 12})" if len(vs) > 12 else ""
                print(f"  {split:15s} {len(vs):4d}  {shown}{more}"
                      + (f"  MISSING: {', '.join(missing)}" if missing else ""))
    held = sorted({v.engine for v in voices("heldout-engine")})
    print(f"held out entirely: {', '.join(held)}\ninstall: {APT_INSTALL}\nand: {MBROLA_APT}")


def demo(out_dir: Path) -> int:
    """A few clean and augmented WAVs per engine; a table of timings and listening proxies."""
    from export import augment

    out_dir.mkdir(parents=True, exist_ok=True)
    picks = {"espeak-ng": ["en-us", "en-gb-x-rp+f3", "en-us-nyc+klatt3"],
             "flite": ["awb", "rms", "slt", "kal"],
             "festival": ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]}
    babble_pool: list[np.ndarray] = []
    rows, failures = [], 0
    for name, names in picks.items():
        engine = ENGINES[name]
        if not engine.available():
            print(f"{name}: not installed ({APT_INSTALL})")
            failures += 1
            continue
        by_name = {v.name: v for v in voices(engine=name)}
        for vname in names:
            voice = by_name[vname]
            for k, text in enumerate(DEMO_TEXTS):
                for rate, pitch in ((1.0, 0.0), (1.2, 3.0 if voice.pitch_control else 0.0)):
                    t0 = time.perf_counter()
                    try:
                        s = synthesize(voice, text, rate, pitch)
                    except SynthError as exc:
                        print(f"FAIL {voice}: {exc}")
                        failures += 1
                        continue
                    secs = time.perf_counter() - t0
                    dur = len(s.audio) / SAMPLE_RATE
                    problems = check(s, text)
                    failures += bool(problems)
                    clean = s.audio.astype(np.float32) / 32768.0
                    babble_pool.append(clean)
                    tag = f"{name}_{vname.replace('+', '_')}_{k}_rate{rate:g}"
                    if rate == 1.0:
                        write_wav(out_dir / f"{tag}_clean.wav", clean, SAMPLE_RATE)
                        if len(babble_pool) > 3:
                            aug = augment.random_chain(clean, np.random.default_rng([k, len(rows)]), babble_pool[:-1])
                            write_wav(out_dir / f"{tag}_aug.wav", aug.audio, SAMPLE_RATE)
                    rows.append((name, vname, text, rate, pitch, secs, dur, median_f0_hz(clean),
                                 20 * np.log10(np.sqrt(np.mean(clean ** 2)) + 1e-12), s.word_spans, problems))
    print(f"\n{'engine':10s} {'voice':24s} {'rate':>4s} {'pitch':>5s} {'dur s':>6s} {'synth s':>7s} {'RTF':>6s} "
          f"{'F0 Hz':>6s} {'RMS dB':>6s}  words (start-end s) / problems")
    for name, vname, text, rate, pitch, secs, dur, f0, rms, spans, problems in rows:
        words = " ".join(f"{w}:{a / SAMPLE_RATE:.2f}-{b / SAMPLE_RATE:.2f}" for w, a, b in spans) if spans \
            else "(no word times)"
        print(f"{name:10s} {vname:24s} {rate:4.1f} {pitch:+5.1f} {dur:6.2f} {secs:7.3f} {secs / dur:6.3f} "
              f"{f0:6.0f} {rms:6.1f}  {words}" + (f"  PROBLEMS: {problems}" if problems else ""))
    print(f"\n{'engine':10s} {'voices':>6s} {'utts':>5s} {'s/utt':>6s} {'RTF':>6s} {'word times':>10s}")
    for name in picks:
        r = [row for row in rows if row[0] == name]
        if r:
            print(f"{name:10s} {len(voices(engine=name)):6d} {len(r):5d} {np.mean([x[5] for x in r]):6.3f} "
                  f"{sum(x[5] for x in r) / sum(x[6] for x in r):6.3f} "
                  f"{sum(x[9] is not None for x in r):5d}/{len(r)}")
    print(f"wrote {len(list(out_dir.glob('*.wav')))} WAVs to {out_dir}")
    return failures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="engines, voices and the split")
    parser.add_argument("--demo", type=Path, metavar="OUT_DIR", help="write demo WAVs and print the table")
    parser.add_argument("--build", nargs=2, metavar=("SPLIT", "N"), help="cache N utterances of SPLIT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        list_voices()
    if args.build:
        data = load_set(args.build[0], int(args.build[1]), args.seed)
        bad = [i for i in range(len(data)) if not all(
            0 <= a < b <= data.offsets[i + 1] - data.offsets[i] for _, a, b in data.word_spans[i])]
        if bad:
            sys.exit(f"bad word spans in {len(bad)} utterances, e.g. {data.specs[bad[0]]}")
        print(f"ok: {len(data)} utterances of {args.build[0]}")
    if args.demo:
        failures = demo(args.demo)
        if failures:
            sys.exit(f"{failures} failed checks")
        print("ok: every engine synthesized, durations, levels and word times are plausible")
    if not (args.list or args.demo or args.build):
        parser.print_help()


if __name__ == "__main__":
    main()
