// The microphone at the AudioContext's rate (often 48 kHz) -> 16 kHz PCM16 chunks for the gateway.
// Two low-pass biquads at 7 kHz (so nothing above 8 kHz folds into speech), then linear
// interpolation at 16 kHz. Posts {pcm: ArrayBuffer (Int16, 512 samples = 32 ms, one VAD block), rms}.

const OUT_RATE = 16000;
const CHUNK = 512;

function lowpass(rate, cutoff) {  // RBJ cookbook biquad, Q = 1/sqrt(2)
  const w = 2 * Math.PI * cutoff / rate, alpha = Math.sin(w) / Math.SQRT2, c = Math.cos(w), a0 = 1 + alpha;
  return {b0: (1 - c) / 2 / a0, b1: (1 - c) / a0, b2: (1 - c) / 2 / a0, a1: -2 * c / a0, a2: (1 - alpha) / a0,
          x1: 0, x2: 0, y1: 0, y2: 0};
}

function filter(f, x) {
  const y = f.b0 * x + f.b1 * f.x1 + f.b2 * f.x2 - f.a1 * f.y1 - f.a2 * f.y2;
  f.x2 = f.x1; f.x1 = x; f.y2 = f.y1; f.y1 = y;
  return y;
}

class MicTo16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE;  // input samples per output sample
    this.filters = this.step > 1 ? [lowpass(sampleRate, 7000), lowpass(sampleRate, 7000)] : [];
    this.pos = 0;  // next output position, in input samples after `prev`
    this.prev = 0;
    this.out = new Int16Array(CHUNK);
    this.n = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    let prev = this.prev, pos = this.pos;
    for (let i = 0; i < channel.length; i++) {
      let x = channel[i];
      for (const f of this.filters) x = filter(f, x);
      // output samples that fall between prev (at i - 1) and x (at i)
      while (pos <= 1) {
        const y = prev + (x - prev) * pos;
        this.push(y);
        pos += this.step;
      }
      pos -= 1;
      prev = x;
    }
    this.prev = prev; this.pos = pos;
    return true;
  }

  push(y) {
    const v = Math.max(-1, Math.min(1, y));
    this.out[this.n++] = v < 0 ? v * 32768 : v * 32767;
    this.sumSquares += v * v;
    if (this.n === CHUNK) {
      const pcm = this.out.buffer.slice(0);
      this.port.postMessage({pcm, rms: Math.sqrt(this.sumSquares / CHUNK)}, [pcm]);
      this.n = 0; this.sumSquares = 0;
    }
  }
}

registerProcessor("mic-to-16k", MicTo16k);
