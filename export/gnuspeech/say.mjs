// GnuSpeech for export.synth: one job per stdin line, one JSON result per stdout line.
//
// A job: {"text", "out" (a WAV path to write), "voice": {vocal_tract_length, reference_glottal_pitch,
// breathiness, glottal_pulse_tp, glottal_pulse_tn, global_radius_coef, nose_coef}, "tempo", "pitch_offset"}.
// A result: {"out", "rate" (Hz), "stream" (the phonetic string, words marked /w), "postures"
// ([symbol, onset ms]...)} or {"error"}. Why our own driver rather than the package's synthesize():
// it exposes only five preset voices, and the posture onsets (printed in debug mode) give each
// word's span, which the recognizer's alignment guide needs.
import { readFileSync, writeFileSync } from 'fs'
import { createInterface } from 'readline'
import { createRequire } from 'module'
import { wrapEmscriptenModuleHeap } from 'wasm-heap-manager'

const require = createRequire(import.meta.url)
const pkgDir = require.resolve('@echogarden/gnuspeech-wasm/package.json').replace(/package\.json$/, '')
const { default: initializer } = await import(pkgDir + 'wasm/gnuspeech.js')
const { defaultTrmControlModelFileContent } = await import(pkgDir + 'dist/utilities/DefaultTrmControlModel.js')

let captured = []
const m = await initializer({ print: (s) => captured.push(s), printErr: (s) => captured.push(s) })
const heap = wrapEmscriptenModuleHeap(m)
const DATA = '/data/en'
const voiceTemplate = new TextDecoder().decode(m.FS.readFile(`${DATA}/voice_male.txt`))

function voiceFile(v) {
  let text = voiceTemplate
  const set = (key, value) => { text = text.replace(new RegExp(`^${key} = .*$`, 'm'), `${key} = ${value}`) }
  set('vocal_tract_length', v.vocal_tract_length)
  set('reference_glottal_pitch', v.reference_glottal_pitch)
  set('breathiness', v.breathiness)
  set('glottal_pulse_tp', v.glottal_pulse_tp)
  set('glottal_pulse_tn_min', v.glottal_pulse_tn)
  set('glottal_pulse_tn_max', v.glottal_pulse_tn)
  set('global_radius_coef', v.global_radius_coef)
  set('global_nose_radius_coef', v.nose_coef)
  return text
}

function say(job) {
  m.FS.writeFile(`${DATA}/voice_es.txt`, voiceFile(job.voice))
  m.FS.writeFile(`${DATA}/trm_control_model.txt`, defaultTrmControlModelFileContent
    .replace('voice_name = male', 'voice_name = es')
    .replace('tempo = 1.0', `tempo = ${job.tempo}`)
    .replace('pitch_offset = -4.0', `pitch_offset = ${job.pitch_offset}`))
  captured = []
  const text = heap.allocNullTerminatedUtf8String(job.text)
  const out = heap.allocNullTerminatedUtf8String('/out.wav')
  const dir = heap.allocNullTerminatedUtf8String(DATA)
  const params = heap.allocNullTerminatedUtf8String('/out-params.txt')
  try {
    m._GnuSpeech_synthesizeToFile(text.address, out.address, dir.address, params.address, 1)
  } finally {
    text.free(); out.free(); dir.free(); params.free()
  }
  const wav = m.FS.readFile('/out.wav')
  writeFileSync(job.out, wav)
  const streamAt = captured.indexOf('STREAM 2')
  const stream = captured.slice(streamAt).find((s) => s.startsWith('<begin>')) ?? ''
  const postures = []
  for (const line of captured) {
    const p = /^\d+ +"([^"]*)" .*onset: ([-\d.]+)/.exec(line)
    if (p) postures.push([p[1], parseFloat(p[2])])
  }
  return { out: job.out, rate: new DataView(wav.buffer, wav.byteOffset).getUint32(24, true), stream, postures }
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  let result
  try {
    result = say(JSON.parse(line))
  } catch (err) {
    result = { error: String(err && err.message || err) }
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}
