// The gateway's page: microphone -> AudioWorklet (16 kHz PCM16) -> WebSocket binary frames;
// Realtime events back -> what the robot heard and what it will do. No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime`;
let ws = null;
let audio = null;  // {ctx, node, stream} while the microphone runs
let items = {};  // item_id -> {words: [], li}
let current = null;  // item_id of the utterance on screen
let response = null;  // LM response in progress

// ----- connection -----------------------------------------------------------------------------

function token() {
  return params.get("token") || $("token").value || localStorage.getItem("edge-stream-token") || "";
}

function connect() {
  if (ws) ws.close();
  const t = token();
  // A browser cannot set an Authorization header: the token travels as a subprotocol beside "realtime".
  ws = new WebSocket(wsUrl, t ? ["realtime", `bearer.${t}`] : ["realtime"]);
  ws.binaryType = "arraybuffer";
  setConn("connecting", "connecting…");
  ws.onopen = () => setConn("open", "connected");
  ws.onclose = (e) => setConn("closed", e.code === 1006 ? "no connection (token?)" : `closed (${e.code})`);
  ws.onmessage = (e) => onEvent(JSON.parse(e.data));
}

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn").textContent = text;
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

// ----- microphone -----------------------------------------------------------------------------

async function startMic() {
  if (audio) return stopMic();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule("mic-worklet.js");
    const node = new AudioWorkletNode(ctx, "mic-to-16k");
    node.port.onmessage = (e) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data.pcm);
      showLevel(e.data.rms);
    };
    ctx.createMediaStreamSource(stream).connect(node);
    await ctx.resume();
    audio = {ctx, node, stream};
    $("start").textContent = "Stop microphone";
    document.body.dataset.state = "listening";
    setVad("silence", "listening");
  } catch (err) {
    toast(`microphone: ${err.message}`);
  }
}

function stopMic() {
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.ctx.close();
  audio = null;
  send({type: "input_audio_buffer.commit"});  // closes an utterance in progress
  $("start").textContent = "Start microphone";
  document.body.dataset.state = "idle";
  setVad("off", "microphone off");
  showLevel(0);
}

function showLevel(rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-5));  // -100 .. 0 dBFS
  $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
}

function setVad(state, text) {
  $("vad").dataset.state = state;
  $("vad-text").textContent = text;
}

// ----- events from the gateway ----------------------------------------------------------------

function item(id) {
  if (!items[id]) items[id] = {words: [], command: null};
  return items[id];
}

function onEvent(e) {
  switch (e.type) {
    case "session.created":
      $("lm").hidden = !(e.session.edge_stream && e.session.edge_stream.lm);
      break;
    case "input_audio_buffer.speech_started":
      setVad("speech", "speech");
      showUtterance(e.item_id);
      break;
    case "input_audio_buffer.speech_stopped":
      setVad("silence", "listening");
      break;
    case "conversation.item.input_audio_transcription.delta":
      if (current !== e.item_id) showUtterance(e.item_id);
      item(e.item_id).words.push(e.delta.trim());
      showHeard(e.item_id);
      break;
    case "transcription.revised":  // an early partial word replaced or taken back
      item(e.item_id).words = e.transcript ? e.transcript.split(" ") : [];
      if (current === e.item_id) showHeard(e.item_id);
      break;
    case "command.retract":  // the preview came from a replaced word: the next delta or done says what holds
      if (current === e.item_id) showCommand("…", "preview", []);
      break;
    case "conversation.item.input_audio_transcription.completed":
      item(e.item_id).words = e.transcript ? e.transcript.split(" ") : [];
      if (current === e.item_id) showHeard(e.item_id);
      break;
    case "command.delta":
      if (current !== e.item_id) showUtterance(e.item_id);
      showCommand(e.command || "…", "preview", []);
      break;
    case "command.done":
      onCommandDone(e);
      break;
    case "command.not_understood":
      showCommand("Sorry, could you say that again?", "not-understood", []);
      $("latency").textContent = `heard “${(e.heard || []).join(" ")}”, confidence ${(e.confidence || 0).toFixed(2)}`;
      break;
    case "response.created":
      response = e.response.id;
      $("lm-reply").textContent = "";
      $("lm-stop").disabled = false;
      break;
    case "response.output_text.delta":
      $("lm-reply").textContent += e.delta;
      break;
    case "response.done":
      response = null;
      $("lm-stop").disabled = true;
      if (e.response.status === "cancelled") $("lm-reply").textContent += " ⏹";
      break;
    case "error":
      toast(e.error.message);
      break;
  }
}

function showUtterance(id) {
  if (current && current !== id) archive(current);
  current = id;
  item(id);
  $("heard").textContent = "";
  showCommand("…", "listening", []);
  $("latency").textContent = "";
}

function showHeard(id) {
  $("heard").textContent = item(id).words.join(" ");
}

function onCommandDone(e) {
  const it = item(e.item_id);
  if (current !== e.item_id) showUtterance(e.item_id);
  let state = "final", text = e.command;
  if (e.cancels) { state = "cancelled"; text = `cancelled — stop “${e.cancels.command}”`; }
  else if (e.cancelled) { state = "cancelled"; text = "cancelled — nothing to do"; }
  else if (e.not_understood) { state = "not-understood"; text = "Sorry, could you say that again?"; }
  else if (!e.command) { state = "none"; text = "no command"; }
  it.command = {text, state, latency: e.latency_ms, known: e.known_latency_ms};
  showCommand(text, state, state === "final" ? e.commands || [] : []);
  $("latency").textContent = latencyText(e);
}

function latencyText(e) {
  const ms = (v) => `${v > 0 ? "+" : ""}${Math.round(v)} ms`;
  if (e.latency_ms == null) return "";
  const known = e.known_latency_ms != null ? `known ${ms(e.known_latency_ms)}, ` : "";
  return `${known}final ${ms(e.latency_ms)} after the end of speech`;
}

function showCommand(text, state, commands) {
  $("command").dataset.state = state;
  $("command-text").textContent = text;
  const fields = $("fields");
  fields.textContent = "";
  for (const c of commands) {
    for (const [name, value] of [["action", c.action], ["direction", c.direction],
                                 ["amount", c.amount != null ? `${c.amount} ${c.unit || ""}`.trim() : null],
                                 ["speed", c.speed]]) {
      if (value == null) continue;
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.dataset.field = name;
      chip.innerHTML = `<small></small><b></b>`;
      chip.querySelector("small").textContent = name;
      chip.querySelector("b").textContent = value;
      fields.appendChild(chip);
    }
  }
}

function archive(id) {
  const it = items[id];
  delete items[id];
  if (!it || (!it.words.length && !it.command)) return;
  const li = document.createElement("li");
  const cmd = it.command ? it.command.text : "…";
  li.dataset.state = it.command ? it.command.state : "none";
  li.innerHTML = `<span class="h-cmd"></span><span class="h-heard"></span><span class="h-lat"></span>`;
  li.querySelector(".h-cmd").textContent = cmd;
  li.querySelector(".h-heard").textContent = `“${it.words.join(" ")}”`;
  li.querySelector(".h-lat").textContent = it.command && it.command.latency != null
    ? `${Math.round(it.command.latency)} ms` : "";
  $("history").prepend(li);
  while ($("history").children.length > 8) $("history").lastChild.remove();
}

let toastTimer = null;
function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 4000);
}

// ----- wiring ---------------------------------------------------------------------------------

$("start").onclick = startMic;
$("reconnect").onclick = () => { localStorage.setItem("edge-stream-token", $("token").value); connect(); };
$("ws-url").textContent = wsUrl;
$("lm-form").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("lm-input").value.trim();
  if (!text) return;
  send({type: "conversation.item.create", item: {type: "message", role: "user",
                                                 content: [{type: "input_text", text}]}});
  send({type: "response.create"});
  $("lm-input").value = "";
};
$("lm-stop").onclick = () => { if (response) send({type: "response.cancel"}); };
connect();
if (params.get("autostart") === "1") startMic();
