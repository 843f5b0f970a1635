"""Acoustic augmentation for synthetic speech: speed, pitch, level, noise, babble, rooms, microphones.

Every function takes float32 audio at 16 kHz in [-1, 1] (`speech_data.SAMPLE_RATE`), is pure numpy
and vectorised (FFT-domain filtering and convolution; no per-sample Python loops), and takes its
randomness from an explicit np.random.Generator, so a (seed, utterance) pair always gives the same
audio. `random_chain` applies a random mix the way a training recipe would and says how the clean
speech's sample positions moved, so word spans can follow the audio.

Relation to speech_data.augment: that one (padding, one room, white/pink noise, peak level) was
the recognizer's recipe before issue 10 and remains voice_report's espeak-ng condition; the
recognizer now trains through `random_chain` (export.train_recognizer) and is scored with two
fixed chains, clean and 10 dB SNR (export.eval_recognizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export import speech_data as sd
from export.speech_data import SAMPLE_RATE

# -- time and pitch -----------------------------------------------------------------------------

def _fft_resize(x: np.ndarray, n_out: int) -> np.ndarray:
    """x band-limited-resampled to n_out samples (speech_data.resample's FFT method, any ratio).
    Padded with 50 ms of silence first so the FFT's wrap-around stays in silence."""
    pad = SAMPLE_RATE // 20
    n_pad_out = round(pad * n_out / max(len(x), 1))
    y = sd.resample(np.pad(x, pad), len(x) + 2 * pad, n_out + 2 * n_pad_out)
    return y[n_pad_out:n_pad_out + n_out]


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (0.9-1.1 typical): duration / factor, pitch and formants x factor,
    like Kaldi's speed perturbation. Sample s of x lands at s / factor."""
    return _fft_resize(x, round(len(x) / factor))


def time_stretch(x: np.ndarray, factor: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Duration x `factor` at the same pitch, by a phase vocoder (STFT n_fft/hop in samples).
    Phase is accumulated with a cumulative sum over output frames, so there is no frame loop."""
    window = np.hanning(n_fft).astype(np.float32)
    xp = np.pad(x, (n_fft, n_fft + hop))
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop] * window  # [n_frames, n_fft]
    spec = np.fft.rfft(frames, axis=1)  # [n_frames, n_bins]
    n_frames = len(spec)
    steps = np.arange(0, n_frames - 1, 1.0 / factor)  # fractional input frame of each output frame
    i = steps.astype(int)
    a = (steps - i)[:, None]
    mag = (1 - a) * np.abs(spec[i]) + a * np.abs(spec[i + 1])  # [n_out, n_bins]
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft  # phase advance of each bin per hop
    dphi = np.angle(spec[i + 1]) - np.angle(spec[i]) - expected
    dphi = dphi - 2 * np.pi * np.round(dphi / (2 * np.pi)) + expected  # the bin's true advance per hop
    phase = np.angle(spec[0]) + np.concatenate([np.zeros((1, spec.shape[1])), np.cumsum(dphi[:-1], axis=0)])
    out_frames = np.fft.irfft(mag * np.exp(1j * phase), n_fft, axis=1) * window  # [n_out, n_fft]
    n_out = len(out_frames)
    idx = (np.arange(n_out) * hop)[:, None] + np.arange(n_fft)  # [n_out, n_fft] sample positions
    y = np.zeros(n_out * hop + n_fft)
    norm = np.zeros_like(y)
    np.add.at(y, idx, out_frames)  # overlap-add
    np.add.at(norm, idx, np.broadcast_to(window ** 2, idx.shape))
    y = y / np.maximum(norm, 1e-3)
    start = round(n_fft * factor)
    return y[start:start + round(len(x) * factor)].astype(np.float32)


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch (and formants) up by `semitones` at the same duration: stretch, then resample back.
    Phase-vocoder quality (slightly phasey): fine for augmentation, not for listening tests."""
    ratio = 2.0 ** (semitones / 12)
    return _fft_resize(time_stretch(x, ratio), len(x))


# -- level --------------------------------------------------------------------------------------

def active_rms(x: np.ndarray) -> float:
    """RMS over the 5 ms frames louder than 1% of the peak (speech, not the silence around it)."""
    loud = sd._loud_mask(x)
    return float(np.sqrt(np.mean(x[loud] ** 2))) if loud.any() else float(np.sqrt(np.mean(x ** 2)))


def set_level(x: np.ndarray, rms_dbfs: float) -> np.ndarray:
    """Scale so the active-speech RMS is `rms_dbfs` dB relative to full scale (-45 to -15 typical)."""
    return (x * (10 ** (rms_dbfs / 20) / max(active_rms(x), 1e-9))).astype(np.float32)


# -- noise --------------------------------------------------------------------------------------

NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectral density ~ 1 / f**exponent


def colored_noise(n: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Unit-RMS noise of `n` samples whose power falls as 1/f**k (white 0, pink 1, brown 2)."""
    if color not in NOISE_EXPONENT:
        raise ValueError(f"noise color {color!r}; expected one of {', '.join(NOISE_EXPONENT)}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    # brown's power at 1/n Hz would swamp everything: flatten below 20 Hz (a DC-blocked mic would)
    spectrum /= np.maximum(f, 20.0) ** (NOISE_EXPONENT[color] / 2)
    spectrum[0] = 0.0
    y = np.fft.irfft(spectrum, n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def babble(n: int, rng: np.random.Generator, pool: list[np.ndarray], talkers: tuple[int, int] = (3, 6)) -> np.ndarray:
    """Unit-RMS babble of `n` samples: `talkers` (inclusive range) utterances from `pool`, each looped
    from a random offset and scaled to unit RMS with +-3 dB spread, summed."""
    if len(pool) < talkers[0]:
        raise ValueError(f"babble needs at least {talkers[0]} utterances in the pool, got {len(pool)}")
    k = int(rng.integers(talkers[0], min(talkers[1], len(pool)) + 1))
    mix = np.zeros(n, np.float32)
    for j in rng.choice(len(pool), size=k, replace=False):  # k <= 6 iterations, each vectorised
        u = pool[int(j)] / max(active_rms(pool[int(j)]), 1e-9)
        u = np.resize(np.roll(u, -int(rng.integers(len(u)))), n)  # loop the utterance to n samples
        mix += (u * 10 ** (rng.uniform(-3, 3) / 20)).astype(np.float32)
    return (mix / (np.sqrt(np.mean(mix ** 2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x plus `noise` scaled to `snr_db` dB below x's active-speech RMS (len(noise) == len(x))."""
    noise_rms = float(np.sqrt(np.mean(noise ** 2))) + 1e-12
    return (x + noise * (active_rms(x) / noise_rms / 10 ** (snr_db / 20))).astype(np.float32)


# -- rooms --------------------------------------------------------------------------------------

def room_ir(rng: np.random.Generator, rt60_s: float, drr_db: float = 3.0, n_early: int = 6) -> np.ndarray:
    """A synthetic room impulse response at 16 kHz: the direct path (1.0 at sample 0), `n_early`
    reflections 1-40 ms later at -3 to -12 dB with random sign, and a late tail of exponentially
    decaying noise from 5-20 ms on (-60 dB after `rt60_s` seconds) whose energy is `drr_db` dB below
    the direct path's (direct-to-reverberant ratio; 10 is a near mic, -5 across a room).
    Simplification: the tail decays at the same rate in every band (real rooms damp highs faster)."""
    n = max(int(rt60_s * SAMPLE_RATE), 32)
    ir = np.zeros(n)
    ir[0] = 1.0
    early = rng.integers(int(0.001 * SAMPLE_RATE), int(0.040 * SAMPLE_RATE), n_early)
    np.add.at(ir, np.minimum(early, n - 1),
              rng.choice([-1.0, 1.0], n_early) * 10 ** (rng.uniform(-12, -3, n_early) / 20))
    onset = int(rng.uniform(0.005, 0.020) * SAMPLE_RATE)
    t = np.arange(n - onset) / SAMPLE_RATE
    tail = rng.standard_normal(n - onset) * np.exp(-6.9 * t / rt60_s)  # 6.9 = ln(1000): -60 dB at rt60
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
    ir[onset:] += tail
    return ir.astype(np.float32)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """x convolved with ir by FFT, cut to len(x): pad x with trailing silence first to keep the tail."""
    size = 1 << (len(x) + len(ir) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:len(x)].astype(np.float32)


# -- microphones and converters -----------------------------------------------------------------

def biquad(kind: str, f0_hz: float, q: float = 0.7071) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of an RBJ-cookbook 'highpass' or 'lowpass' biquad at 16 kHz; a[0] == 1."""
    w0 = 2 * np.pi * f0_hz / SAMPLE_RATE
    alpha, c = np.sin(w0) / (2 * q), np.cos(w0)
    if kind == "lowpass":
        b = np.array([(1 - c) / 2, 1 - c, (1 - c) / 2])
    elif kind == "highpass":
        b = np.array([(1 + c) / 2, -(1 + c), (1 + c) / 2])
    else:
        raise ValueError(f"biquad kind {kind!r}; expected 'lowpass' or 'highpass'")
    a = np.array([1 + alpha, -2 * c, 1 - alpha])
    return b / a[0], a / a[0]


BUTTERWORTH4_Q = (0.5412, 1.3066)  # two biquads in cascade make a 4th-order Butterworth (24 dB/octave)


def filter_biquads(x: np.ndarray, sections: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """x through cascaded biquads, evaluated as their exact frequency response on a zero-padded FFT
    (the same output as running the recursion, up to a tail below -100 dB beyond 0.25 s padding)."""
    n = len(x) + SAMPLE_RATE // 4
    size = 1 << (n - 1).bit_length()
    z = np.exp(-1j * np.pi * np.arange(size // 2 + 1) / (size // 2))  # z**-1 on the rfft bins
    h = np.ones_like(z)
    for b, a in sections:
        h *= (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    return np.fft.irfft(np.fft.rfft(x, size) * h, size)[:len(x)].astype(np.float32)


def mic_band(x: np.ndarray, highpass_hz: float = 200.0, lowpass_hz: float = 3400.0) -> np.ndarray:
    """A small microphone / telephone channel: 4th-order Butterworth high-pass and low-pass (Hz)."""
    sections = [biquad("highpass", highpass_hz, q) for q in BUTTERWORTH4_Q]
    sections += [biquad("lowpass", lowpass_hz, q) for q in BUTTERWORTH4_Q]
    return filter_biquads(x, sections)


def clip(x: np.ndarray, level: float) -> np.ndarray:
    """Hard clipping at +-`level` of full scale (0 < level <= 1): an overdriven preamp or ADC."""
    return np.clip(x, -level, level).astype(np.float32)


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Round to a `bits`-bit converter's steps (8-12 typical for a cheap one), keeping full scale."""
    step = 2.0 ** (1 - bits)
    return (np.round(x / step) * step).astype(np.float32)


# -- a training recipe --------------------------------------------------------------------------

@dataclass(frozen=True)
class Chain:
    """Probabilities and ranges of `random_chain`'s steps. Units in the names; ranges inclusive."""

    speed_p: float = 0.6
    speed_factor: tuple[float, float] = (0.9, 1.1)
    pitch_p: float = 0.5  # with formants: a talker of another size (run 2: was 0.3 and +-3)
    pitch_st: tuple[float, float] = (-5.0, 5.0)
    lead_s: tuple[float, float] = (0.0, 0.8)  # 0: the VAD gate hands over speech with little lead-in
    trail_s: tuple[float, float] = (0.4, 0.9)
    reverb_p: float = 0.5
    rt60_s: tuple[float, float] = (0.1, 0.8)
    drr_db: tuple[float, float] = (-3.0, 10.0)
    noise_p: float = 0.8
    noise_kinds: tuple[str, ...] = ("white", "pink", "brown", "babble")
    snr_db: tuple[float, float] = (0.0, 30.0)
    mic_p: float = 0.6
    highpass_hz: tuple[float, float] = (100.0, 300.0)
    lowpass_hz: tuple[float, float] = (3400.0, 7000.0)
    level_dbfs: tuple[float, float] = (-40.0, -15.0)  # active-speech RMS
    clip_p: float = 0.05
    clip_level: tuple[float, float] = (0.3, 0.8)
    quantize_p: float = 0.05
    bits: tuple[int, int] = (8, 12)
    floor_rms: float = 3e-4  # always present: real "silence" is never digital zero


@dataclass
class Augmented:
    audio: np.ndarray  # [n] float32, 16 kHz, in [-1, 1]
    offset: int  # clean sample s is at offset + s * stretch in audio
    stretch: float  # 1 / speed factor
    steps: list[str] = field(default_factory=list)  # what was applied, with its parameters

    def position(self, clean_sample: int) -> int:
        """Where sample `clean_sample` of the clean speech is in `audio` (word spans follow this)."""
        return self.offset + round(clean_sample * self.stretch)


def random_chain(clean: np.ndarray, rng: np.random.Generator, babble_pool: list[np.ndarray] = (),
                 cfg: Chain = Chain()) -> Augmented:
    """`clean` (float32, 16 kHz) through a random mix of steps, in the order sound meets them: talker
    (speed, pitch), silence around the speech, room, noise in the room, microphone band, level,
    converter (clip, bits). `babble_pool` holds other clean utterances (not `clean` itself); babble
    is left out of the draw when it has fewer than 3."""
    x, steps, stretch = np.asarray(clean, np.float32), [], 1.0
    if rng.random() < cfg.speed_p:
        f = rng.uniform(*cfg.speed_factor)
        x, stretch = speed(x, f), stretch / f
        steps.append(f"speed x{f:.3f}")
    if rng.random() < cfg.pitch_p:
        st = rng.uniform(*cfg.pitch_st)
        x = pitch_shift(x, st)
        steps.append(f"pitch {st:+.1f} st")
    lead = int(rng.uniform(*cfg.lead_s) * SAMPLE_RATE)
    trail = int(rng.uniform(*cfg.trail_s) * SAMPLE_RATE)
    x = np.pad(x, (lead, trail))
    if rng.random() < cfg.reverb_p:
        rt60, drr = rng.uniform(*cfg.rt60_s), rng.uniform(*cfg.drr_db)
        x = convolve(x, room_ir(rng, rt60, drr))
        steps.append(f"room rt60 {rt60:.2f} s drr {drr:+.0f} dB")
    if rng.random() < cfg.noise_p:
        kinds = [k for k in cfg.noise_kinds if k != "babble" or len(babble_pool) >= 3]
        kind = kinds[int(rng.integers(len(kinds)))]
        snr = rng.uniform(*cfg.snr_db)
        noise = babble(len(x), rng, list(babble_pool)) if kind == "babble" else colored_noise(len(x), rng, kind)
        x = add_noise(x, noise, snr)
        steps.append(f"{kind} noise {snr:.0f} dB SNR")
    if rng.random() < cfg.mic_p:
        hp, lp = rng.uniform(*cfg.highpass_hz), rng.uniform(*cfg.lowpass_hz)
        x = mic_band(x, hp, lp)
        steps.append(f"mic {hp:.0f}-{lp:.0f} Hz")
    level = rng.uniform(*cfg.level_dbfs)
    x = set_level(x, level)
    steps.append(f"level {level:.0f} dBFS")
    if rng.random() < cfg.clip_p:
        c = rng.uniform(*cfg.clip_level)
        x = clip(x, c * float(np.abs(x).max()))  # relative to this signal's peak: always bites
        steps.append(f"clip at {c:.2f} of peak")
    x = x + rng.standard_normal(len(x)).astype(np.float32) * cfg.floor_rms
    if rng.random() < cfg.quantize_p:
        bits = int(rng.integers(cfg.bits[0], cfg.bits[1] + 1))
        x = quantize(x, bits)
        steps.append(f"{bits}-bit")
    return Augmented(np.clip(x, -1.0, 1.0).astype(np.float32), lead, stretch, steps)


# -- self-check ---------------------------------------------------------------------------------

def _self_check() -> list[str]:
    """Measured properties of each step on test signals; returns the failures."""
    from export.synth import median_f0_hz

    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    # a 1 s "voiced" test tone: 150 Hz harmonics under a syllable-rate envelope
    tone = (sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)))
    tone = (0.2 * tone / np.abs(tone).max()).astype(np.float32)
    fails, report = [], []

    def expect(name, value, lo, hi, unit=""):
        report.append(f"{name:34s} {value:10.3f} {unit:6s} (expected {lo:g} to {hi:g})")
        if not lo <= value <= hi:
            fails.append(report[-1])

    y = speed(tone, 1.1)
    expect("speed 1.1: length ratio", len(y) / len(tone), 0.905, 0.913)
    expect("speed 1.1: F0", median_f0_hz(y), 160, 170, "Hz")
    y = pitch_shift(tone, 4.0)
    expect("pitch +4 st: length ratio", len(y) / len(tone), 0.999, 1.001)
    expect("pitch +4 st: F0 (150 * 1.26 = 189)", median_f0_hz(y), 183, 195, "Hz")
    expect("time_stretch 1.2: length ratio", len(time_stretch(tone, 1.2)) / len(tone), 1.19, 1.21)
    n = 4 * SAMPLE_RATE
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    band = lambda lo, hi: (f >= lo) & (f < hi)
    for color, slope in (("white", 0.0), ("pink", -3.01), ("brown", -6.02)):
        p = np.abs(np.fft.rfft(colored_noise(n, rng, color))) ** 2
        db_per_octave = 10 * np.log10(p[band(2000, 4000)].mean() / p[band(1000, 2000)].mean())
        expect(f"{color} noise: dB per octave", db_per_octave, slope - 0.5, slope + 0.5, "dB")
    noisy = add_noise(tone, colored_noise(len(tone), rng, "pink"), 10.0)
    snr = 20 * np.log10(active_rms(tone) / np.sqrt(np.mean((noisy - tone) ** 2)))
    expect("add_noise 10 dB: measured SNR", snr, 9.9, 10.1, "dB")
    pool = [np.roll(tone, k * 1000) for k in range(6)]
    expect("babble: RMS", float(np.sqrt(np.mean(babble(n, rng, pool) ** 2))), 0.99, 1.01)
    ir = room_ir(rng, rt60_s=0.5, drr_db=0.0)
    edc = np.cumsum(ir[::-1] ** 2)[::-1]  # Schroeder backward integration
    edc_db = 10 * np.log10(edc / edc[0])
    i5, i25 = np.argmax(edc_db < -5), np.argmax(edc_db < -25)
    expect("room_ir 0.5 s: RT60 from T20", 3 * (i25 - i5) / SAMPLE_RATE, 0.42, 0.58, "s")
    hp, lp = 200.0, 3400.0
    out = mic_band(colored_noise(n, rng, "white"), hp, lp)
    p = np.abs(np.fft.rfft(out)) ** 2
    gain = lambda lo, hi: 10 * np.log10(p[band(lo, hi)].mean() / p[band(800, 1200)].mean())
    expect("mic 200-3400: 60-80 Hz vs 1 kHz", gain(60, 80), -50, -30, "dB")
    expect("mic 200-3400: at 3400 Hz", gain(3350, 3450), -4, -2, "dB")
    expect("mic 200-3400: 6-7 kHz vs 1 kHz", gain(6000, 7000), -60, -20, "dB")
    # the FFT evaluation against the biquad recursion itself, on 2000 samples
    x = rng.standard_normal(2000)
    b, a = biquad("highpass", 300.0)
    ref, s1, s2 = np.zeros_like(x), 0.0, 0.0
    for k, v in enumerate(x):  # transposed direct form II, the reference only
        ref[k] = b[0] * v + s1
        s1, s2 = b[1] * v - a[1] * ref[k] + s2, b[2] * v - a[2] * ref[k]
    expect("biquad FFT vs recursion: max error", float(np.abs(filter_biquads(x, [(b, a)]) - ref).max()), 0, 1e-4)
    expect("quantize 8 bit: distinct levels", len(np.unique(quantize(tone, 8))), 2, 256)
    a1 = random_chain(tone, np.random.default_rng(1), pool)
    a2 = random_chain(tone, np.random.default_rng(1), pool)
    a3 = random_chain(tone, np.random.default_rng(2), pool)
    expect("random_chain: same seed, max diff", float(np.abs(a1.audio - a2.audio).max()), 0, 0)
    expect("random_chain: other seed differs", float(len(a1.audio) != len(a3.audio)
                                                     or np.abs(a1.audio - a3.audio).max() > 0), 1, 1)
    for line in report:
        print(line)
    return fails


if __name__ == "__main__":
    import sys
    import time as _time

    failures = _self_check()
    rng = np.random.default_rng(3)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    speech = (0.1 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    t0 = _time.perf_counter()
    chains = [random_chain(speech, rng, [np.roll(speech, k) for k in range(1, 7)]) for _ in range(50)]
    ms = 1000 * (_time.perf_counter() - t0) / 50
    print(f"random_chain on 2 s of audio: {ms:.1f} ms per utterance; e.g. {chains[0].steps}")
    if failures:
        sys.exit(f"{len(failures)} checks failed:\n" + "\n".join(failures))
    print("ok: every augmentation step measured as specified")
