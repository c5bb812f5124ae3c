// The kiosk: microphone → WebRTC → the appliance; captions, state and speech back over the data channel
// and the audio track. Plain browser APIs only: the device is offline, nothing loads from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const NAMES = { en: "English", es: "Spanish", pt: "Portuguese", fr: "French", de: "German", it: "Italian" };
let pc = null, session = null, mic = null, meterTimer = null, config = { pairs: [] };
const turns = new Map();

function setState(state) {
  document.body.className = state;
  $("state").textContent = { listening: "Listening", thinking: "Thinking", speaking: "Speaking",
    idle: "Ready", connecting: "Connecting", starting: "Starting" }[state] || state;
}

function showError(message) { $("error").textContent = message || ""; }

function fillLanguages() {
  // English first (the device's own English model; alphabetical order made German the default), then the rest
  const sources = [...new Set(["en"].concat(config.pairs.map((p) => p[0])))];
  $("language").innerHTML = sources.map((l) => `<option value="${l}">${NAMES[l] || l}</option>`).join("");
  fillTargets();
}

function fillTargets() {
  const source = $("language").value, chosen = $("target").value;
  const targets = config.pairs.filter((p) => p[0] === source).map((p) => p[1]);
  $("target").innerHTML = targets.map((l) => `<option value="${l}">${NAMES[l] || l}</option>`).join("");
  if (targets.includes(chosen)) $("target").value = chosen;  // refilling (after Stop) keeps the choice
  $("target").parentElement.classList.toggle("off", $("mode").value !== "interpret");
  updateStart();
}

function updateStart() {  // a call needs a mode and a language, and interpretation a target too
  const ready = $("mode").value && $("language").value && ($("mode").value !== "interpret" || $("target").value);
  $("start").disabled = !ready || pc !== null;
}

// Select a preset from the URL. Only once the options exist (after /kiosk/config): a value the device does not
// offer is said, and leaves nothing selected (Start waits for a choice) rather than another language silently.
function preset(id, value) {
  if (!value) return;
  $(id).value = value;
  if ($(id).value !== value) {
    $(id).selectedIndex = -1;
    showError(`This device does not offer the preset ${id}=${value}; choose another.`);
  }
}

function caption(event) {
  if (!event.final) {
    $("partial").textContent = event.target || event.source;
    return;
  }
  $("partial").textContent = "";
  let turn = turns.get(event.utterance);
  if (!turn) {
    turn = document.createElement("div");
    turn.className = "turn";
    turn.innerHTML = '<p class="source"></p><p class="target"></p>';
    $("history").appendChild(turn);
    turns.set(event.utterance, turn);
  }
  const same = !event.target || event.target === event.source;  // Whisper translated: no source text
  turn.classList.toggle("plain", same);
  turn.querySelector(".source").textContent = same ? (event.target || event.source) : event.source;
  turn.querySelector(".target").textContent = same ? "" : event.target;
  while ($("history").children.length > 30) $("history").firstChild.remove();
  turn.scrollIntoView({ block: "end" });
}

function onEvent(message) {
  const event = JSON.parse(message.data);
  if (event.type === "caption") caption(event);
  else if (event.type === "state") setState(event.state);
  else if (event.type === "error") showError(event.message);
}

function startMeter(stream) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    $("level").value = Math.min(1, Math.sqrt(sum / data.length) * 4);
  }, 50);
  return ctx;
}

function setTalking(on) {
  if (!mic) return;
  mic.getAudioTracks().forEach((t) => { t.enabled = on; });
  $("ptt").classList.toggle("down", on);
}

async function start() {
  showError("");
  $("start").disabled = true;
  setState("connecting");
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
  } catch (err) {
    showError("No microphone: " + err.message);
    return stop();
  }
  startMeter(mic);
  pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("events");
  channel.onmessage = onEvent;
  mic.getAudioTracks().forEach((t) => pc.addTrack(t, mic));
  pc.ontrack = (e) => { $("speaker").srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (pc && ["failed", "closed"].includes(pc.connectionState)) {
      showError("The connection to the device was lost.");
      stop();
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // the answer is sent once, so gather every candidate first
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    setTimeout(resolve, 3000);
  });
  const interpret = $("mode").value === "interpret";
  const body = { sdp: pc.localDescription.sdp, type: "offer", mode: $("mode").value,
    language: $("language").value, target: interpret ? $("target").value : null };
  const reply = await fetch("/v1/webrtc/offer", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await reply.json();
  if (!reply.ok) {
    showError((answer.error && answer.error.message) || `The device refused the call (${reply.status}).`);
    return stop();
  }
  session = answer.session;
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  setTalking($("talk").value === "hands-free");
  setState("listening");
  $("stop").disabled = false;
}

async function stop() {
  if (session) {
    fetch(`/v1/webrtc/sessions/${session}`, { method: "DELETE", credentials: "same-origin" }).catch(() => {});
  }
  session = null;
  if (pc) { const old = pc; pc = null; old.close(); }
  if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
  clearInterval(meterTimer);
  $("level").value = 0;
  $("stop").disabled = true;
  setState("idle");
  fillTargets();
}

function bindPushToTalk() {
  const ptt = $("ptt");
  const down = (e) => { e.preventDefault(); setTalking(true); };
  const up = (e) => { e.preventDefault(); if ($("talk").value === "push") setTalking(false); };
  ptt.addEventListener("pointerdown", down);
  ptt.addEventListener("pointerup", up);
  ptt.addEventListener("pointerleave", up);
  document.addEventListener("keydown", (e) => { if (e.code === "Space" && $("talk").value === "push" && !e.repeat) down(e); });
  document.addEventListener("keyup", (e) => { if (e.code === "Space" && $("talk").value === "push") up(e); });
  $("talk").addEventListener("change", () => {
    const push = $("talk").value === "push";
    ptt.hidden = !push;
    setTalking(!push);
  });
}

// The device's languages. A device just booted answers 503 with Retry-After until its models are warm (the
// screen of a kiosk comes up before that): say so and ask again, rather than send anyone to sign in.
async function readConfig() {
  for (;;) {
    const reply = await fetch("/kiosk/config", { credentials: "same-origin" });
    if (reply.ok) { showError(""); return reply.json(); }
    if (reply.status !== 503) {
      showError(reply.status === 401 || reply.status === 403 ? "Signed out; sign in again."
        : `Could not read the device's languages (HTTP ${reply.status}).`);
      return config;
    }
    setState("starting");  // Start stays disabled: no languages yet
    showError("The device is starting (its models are warming up)…");
    const wait = Math.min(Math.max(Number(reply.headers.get("Retry-After")) || 5, 1), 30);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

async function init() {
  $("start").onclick = start;
  $("stop").onclick = stop;
  $("fullscreen").onclick = () => document.fullscreenElement ? document.exitFullscreen()
    : document.documentElement.requestFullscreen();
  $("mode").onchange = fillTargets;
  $("language").onchange = fillTargets;
  $("target").onchange = updateStart;
  bindPushToTalk();
  config = await readConfig();
  fillLanguages();
  const params = new URLSearchParams(location.search);  // preset a kiosk: ?mode=interpret&language=es&target=en
  for (const key of ["mode", "language", "talk"]) preset(key, params.get(key));
  fillTargets();
  preset("target", params.get("target"));
  updateStart();
  $("talk").dispatchEvent(new Event("change"));  // a push-to-talk preset shows its button
  setState("idle");
  document.body.dataset.ready = "true";  // presets applied: what a test (or a kiosk script) may wait for
}

init();
