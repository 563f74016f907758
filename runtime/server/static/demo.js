// The live demo page: microphone -> AudioWorklet (PCM16) -> WebSocket /v1/stream -> one
// result per utterance: emoji + label, transcript, a bar per class for the audio alone,
// the transcript alone and both fused, the smoothed label, and the last minute as a
// timeline. Same origin only: every URL is this page's own server.
"use strict";

(() => {
  const EMOJI = { neutral: "😐", happy: "😄", sad: "😢", angry: "😠", fearful: "😨", disgust: "🤢", surprised: "😲" };
  const KEY_STORE = "emotech.apiKey";
  const TIMELINE_S = 60;  // seconds of history on the timeline
  const MAX_RATE = 48000;  // Hz: the highest sample rate /v1/stream accepts
  const WAVE_POINTS = 600;  // min/max pairs drawn on the waveform (one per 2048-frame chunk: ~25 s at 48 kHz)
  const $ = (id) => document.getElementById(id);

  let labels = [];
  let ws = null, ctx = null, media = null;
  let streamT0 = null;  // wall-clock seconds of the stream's first sample
  let count = 0;
  const utterances = [];  // {start, end, label, smoothed} in wall-clock seconds
  const wave = [];  // [min, max] per chunk, in [-1, 1]

  const now = () => performance.now() / 1000;
  const emoji = (label) => EMOJI[label] || "🔹";
  const colour = (label) => `var(--${label in EMOJI ? label : "other"})`;

  function status(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  // ------------------------------------------------------------------ the API key

  function apiKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  function setKey(key) {
    try {
      if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    } catch (e) { /* storage disabled: the key lasts until the page closes */ }
    memoryKey = key;
  }
  let memoryKey = "";
  const currentKey = () => apiKey() || memoryKey;

  function authHeaders() {
    const key = currentKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // base64url of the key's UTF-8 bytes: a WebSocket subprotocol is a token, the key may not be
  function b64url(text) {
    let bin = "";
    for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function showKeyForm(message) {
    $("key-form").hidden = false;
    $("key-input").focus();
    status(message, true);
  }

  // ------------------------------------------------------------------ set-up

  async function init() {
    $("start").disabled = true;
    let response;
    try {
      response = await fetch("/v1/model", { headers: authHeaders(), cache: "no-store" });
    } catch (e) {
      status("cannot reach the server: " + e.message, true);
      return;
    }
    if (response.status === 401) {
      showKeyForm(currentKey() ? "the server refused this API key: enter its key" : "this server needs its API key");
      return;
    }
    if (!response.ok) {
      status(`/v1/model answered ${response.status}`, true);
      return;
    }
    const model = await response.json();
    labels = model.labels;
    buildBars();
    const stream = model.server && model.server.stream;
    if (!stream || !stream.available) {
      status("this server runs without /v1/stream (--no-stream): nothing to listen with", true);
      return;
    }
    $("start").disabled = false;
    status(`ready: ${model.engine} ${model.precision} on ${model.device}. Press Start and speak.`);
  }

  function buildBars() {
    for (const group of document.querySelectorAll(".bar-group")) {
      const rows = group.querySelector(".rows");
      rows.replaceChildren();
      for (const label of labels) {
        const row = document.createElement("div");
        row.className = "row";
        row.dataset.label = label;
        const name = document.createElement("span");
        name.textContent = `${emoji(label)} ${label}`;
        const track = document.createElement("div");
        track.className = "track";
        const fill = document.createElement("div");
        fill.className = "fill";
        fill.style.background = colour(label);
        track.append(fill);
        const value = document.createElement("span");
        value.className = "value";
        value.textContent = "–";
        row.append(name, track, value);
        rows.append(row);
      }
      group.classList.add("empty");
    }
  }

  function setBars(kind, scores) {
    const group = document.querySelector(`.bar-group[data-kind="${kind}"]`);
    group.classList.toggle("empty", !scores);
    for (const row of group.querySelectorAll(".row")) {
      const p = scores ? scores[row.dataset.label] || 0 : 0;
      row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
      row.querySelector(".value").textContent = scores ? p.toFixed(2) : "–";
    }
  }

  // ------------------------------------------------------------------ microphone and stream

  async function start() {
    $("start").disabled = true;
    try {
      media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      status("no microphone: " + e.message, true);
      $("start").disabled = false;
      return;
    }
    ctx = new AudioContext();
    if (ctx.sampleRate > MAX_RATE) {  // e.g. a 96-kHz interface: let the browser resample to what the stream takes
      await ctx.close();
      ctx = new AudioContext({ sampleRate: MAX_RATE });
    }
    await ctx.audioWorklet.addModule("/demo/capture-worklet.js");
    const source = ctx.createMediaStreamSource(media);
    const node = new AudioWorkletNode(ctx, "emotech-capture", { processorOptions: { chunk: 2048 } });
    const mute = ctx.createGain();  // the graph must reach the destination to be pulled; silently
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(ctx.destination);
    await ctx.resume();

    const protocols = ["emotech.v1"];
    if (currentKey()) protocols.push("emotech.key." + b64url(currentKey()));
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/v1/stream", protocols);
    socket.binaryType = "arraybuffer";
    ws = socket;
    const rate = ctx.sampleRate;
    let started = false;
    streamT0 = null;
    socket.onopen = () => socket.send(JSON.stringify({ type: "start", sample_rate: rate, per_modality: true }));
    socket.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "started") started = true;
      onMessage(msg);
    };
    socket.onclose = (event) => {
      stopAudio();
      ws = null;
      $("start").disabled = false;
      $("stop").disabled = true;
      if (event.code !== 1000) {
        status(`the stream closed (code ${event.code}${event.reason ? ": " + event.reason : ""}); ` +
               "if the server needs an API key, check it (API key button)", true);
      }
    };
    node.port.onmessage = (event) => {
      const pcm = new Int16Array(event.data);
      addWave(pcm);
      if (started && socket.readyState === WebSocket.OPEN) {
        if (streamT0 === null) streamT0 = now() - pcm.length / rate;
        socket.send(event.data);
      }
    };
    $("stop").disabled = false;
    status(`connecting (microphone at ${rate} Hz)…`);
  }

  function stop() {
    $("stop").disabled = true;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
    stopAudio();
    status("finishing the last utterance…");
  }

  function stopAudio() {
    if (media) media.getTracks().forEach((t) => t.stop());
    if (ctx) ctx.close();
    media = ctx = null;
  }

  function onMessage(msg) {
    if (msg.type === "started") {
      status(`listening: ${msg.sample_rate} Hz from the microphone, scores smoothed with a ${msg.smoothing_half_life_s} s half-life`);
    } else if (msg.type === "result") {
      showResult(msg);
    } else if (msg.type === "error") {
      const where = msg.segment === undefined ? "" : ` (utterance ${msg.segment})`;
      status(`error${where}: ${msg.error.message}`, true);
    } else if (msg.type === "done") {
      status(`stream ended after ${msg.segments} utterance(s). Press Start to listen again.`);
    }
  }

  function showResult(msg) {
    count += 1;
    const fused = msg.scores;
    const parts = msg.modality_scores || { audio: msg.modalities.includes("text") ? null : fused, text: null };
    setBars("audio", parts.audio);
    setBars("text", parts.text);
    setBars("fused", fused);
    $("emoji").textContent = emoji(msg.label);
    $("label").textContent = msg.label;
    $("confidence").textContent =
      `${(100 * fused[msg.label]).toFixed(0)} % · ${msg.modalities.join(" + ")} · ${(msg.end_s - msg.start_s).toFixed(1)} s`;
    $("smoothed").textContent = msg.smoothed
      ? `steady (half-life ${msg.smoothed.half_life_s} s): ${emoji(msg.smoothed.label)} ${msg.smoothed.label}` : "";
    const transcript = $("transcript");
    transcript.textContent = msg.transcript ? `“${msg.transcript}”` : "(no transcript)";
    if (msg.transcript_source) {
      const src = document.createElement("span");
      src.className = "source";
      src.textContent = msg.transcript_source;
      transcript.append(src);
    }
    const t0 = streamT0 === null ? now() - msg.end_s : streamT0;
    utterances.push({ start: t0 + msg.start_s, end: t0 + msg.end_s, label: msg.label, smoothed: msg.smoothed && msg.smoothed.label });
    addHistory(msg);
  }

  function addHistory(msg) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.segment = String(msg.segment);
    li.dataset.label = msg.label;
    if (msg.smoothed) li.dataset.smoothed = msg.smoothed.label;
    li.dataset.transcript = msg.transcript || "";
    const head = document.createElement("span");
    head.textContent = `${emoji(msg.label)} ${msg.label} ${(100 * msg.scores[msg.label]).toFixed(0)} % `;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${msg.start_s.toFixed(1)}–${msg.end_s.toFixed(1)} s `;
    li.append(head, when);
    if (msg.transcript) {
      const q = document.createElement("q");
      q.textContent = msg.transcript;
      const src = document.createElement("span");
      src.className = "src";
      src.textContent = ` ${msg.transcript_source}`;
      li.append(q, src);
    }
    $("results").prepend(li);
  }

  // ------------------------------------------------------------------ waveform and timeline

  function addWave(pcm) {
    let lo = 0, hi = 0;
    for (let i = 0; i < pcm.length; i++) {
      if (pcm[i] < lo) lo = pcm[i];
      if (pcm[i] > hi) hi = pcm[i];
    }
    wave.push([lo / 32768, hi / 32767]);
    if (wave.length > WAVE_POINTS) wave.splice(0, wave.length - WAVE_POINTS);
  }

  function drawWave() {
    const canvas = $("wave");
    const g = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, mid = h / 2;
    g.clearRect(0, 0, w, h);
    g.fillStyle = "#5aa9ff";
    const step = w / WAVE_POINTS;
    wave.forEach(([lo, hi], i) => {
      const x = w - (wave.length - i) * step;
      g.fillRect(x, mid - hi * mid, Math.max(step - 0.5, 1), Math.max((hi - lo) * mid, 1));
    });
  }

  function drawTimeline() {
    const box = $("timeline");
    const t = now();
    while (utterances.length && utterances[0].end < t - TIMELINE_S) utterances.shift();
    box.replaceChildren(...utterances.map((u) => {
      const el = document.createElement("div");
      el.className = "utt";
      el.style.left = `${(100 * (u.start - (t - TIMELINE_S))) / TIMELINE_S}%`;
      el.style.width = `${(100 * (u.end - u.start)) / TIMELINE_S}%`;
      el.style.background = colour(u.label);
      if (u.smoothed) el.style.borderBottom = `.35rem solid ${colour(u.smoothed)}`;
      el.title = u.smoothed ? `${u.label} (steady: ${u.smoothed})` : u.label;
      el.textContent = emoji(u.label);
      return el;
    }));
  }

  function frame() {
    drawWave();
    drawTimeline();
    requestAnimationFrame(frame);
  }

  // ------------------------------------------------------------------ kiosk

  function setKiosk(on) {
    document.body.classList.toggle("kiosk", on);
    $("kiosk").setAttribute("aria-pressed", String(on));
    if (on && document.documentElement.requestFullscreen && !document.fullscreenElement) {
      document.documentElement.requestFullscreen().catch(() => { /* not allowed without a gesture: large type only */ });
    } else if (!on && document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
    }
  }

  // ------------------------------------------------------------------ wiring

  $("start").addEventListener("click", () => start().catch((e) => {
    status("could not start: " + e.message, true);
    stopAudio();
    $("start").disabled = false;
  }));
  $("stop").addEventListener("click", stop);
  $("kiosk").addEventListener("click", () => setKiosk(!document.body.classList.contains("kiosk")));
  $("key-button").addEventListener("click", () => { $("key-form").hidden = !$("key-form").hidden; });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("key-input").value.trim());
    $("key-input").value = "";
    $("key-form").hidden = true;
    init();
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    $("key-form").hidden = true;
    status("API key forgotten");
    init();
  });
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text-input").value.trim();
    if (text && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "transcript", text }));
      $("text-input").value = "";
    }
  });
  document.addEventListener("fullscreenchange", () => {
    if (!document.fullscreenElement && document.body.classList.contains("kiosk")) setKiosk(false);
  });

  if (new URLSearchParams(location.search).get("kiosk") === "1") setKiosk(true);
  requestAnimationFrame(frame);
  init();
})();
