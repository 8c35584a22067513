// minwm play: the page side of minwm_env/play/server.py (protocol in its docstring).
"use strict";
(function () {
  const KEY_CODES = {
    KeyW: "w", KeyS: "s", KeyA: "a", KeyD: "d", KeyR: "u", KeyF: "dn",
    ArrowLeft: "j", KeyJ: "j", ArrowRight: "l", KeyL: "l",
    ArrowUp: "i", KeyI: "i", ArrowDown: "k", KeyK: "k",
  };
  const KIND_MODEL = 1, KIND_TRUTH = 2, KIND_VIDEO = 3;
  const $ = (id) => document.getElementById(id);
  const modelCanvas = $("model"), truthCanvas = $("truth");
  const modelCtx = modelCanvas.getContext("2d"), truthCtx = truthCanvas.getContext("2d");

  // What the page knows; read by the tests through window.minwmPlay.
  const state = {
    connected: false, ready: false, closed: false, session: null, fps: 16, mime: "image/png",
    chunks: 0, starts: 0, shown: 0, decoded: 0, decodedFps: 0, latencyMs: null, modelMs: null,
    pose: null, layout: 0, truthAvailable: false, showTruth: false, recording: false,
    error: null, errors: 0, inFlight: false,
  };
  const held = new Set(), tapped = new Set();
  const modelQueue = [], truthQueue = [];
  const decodeTimes = [];
  let ws = null, errorTimer = null;

  function showError(message, fatal) {
    state.error = message; state.errors += 1;
    const box = $("error");
    box.textContent = (fatal ? "Disconnected: " : "Error: ") + message;
    box.hidden = false;
    clearTimeout(errorTimer);
    if (!fatal) errorTimer = setTimeout(() => { box.hidden = true; }, 10000);
  }

  function setStatus(text) { $("status").textContent = text; }

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function enqueue(queue, bytes) {
    const entry = { bitmap: null, failed: false };
    queue.push(entry);
    createImageBitmap(new Blob([bytes], { type: state.mime })).then((bitmap) => {
      entry.bitmap = bitmap;
      if (queue === modelQueue) {
        state.decoded += 1;
        decodeTimes.push(performance.now());
      }
    }, () => { entry.failed = true; });
  }

  function drawNext(queue, ctx) {
    while (queue.length && queue[0].failed) queue.shift();
    if (!queue.length || !queue[0].bitmap) return false;
    // Far behind (a slow page): skip to keep up with the stream.
    while (queue.length > 2 * state.fps && queue[1] && queue[1].bitmap) queue.shift().bitmap.close();
    const entry = queue.shift();
    ctx.drawImage(entry.bitmap, 0, 0, ctx.canvas.width, ctx.canvas.height);
    entry.bitmap.close();
    return true;
  }

  function tick() {
    if (drawNext(modelQueue, modelCtx)) state.shown += 1;
    drawNext(truthQueue, truthCtx);
    const now = performance.now();
    while (decodeTimes.length && decodeTimes[0] < now - 2000) decodeTimes.shift();
    state.decodedFps = decodeTimes.length / 2;
    state.queued = modelQueue.length;
    updateHud();
    pump();
  }

  function updateHud() {
    const p = state.pose;
    const pose = p ? `x ${p.x.toFixed(2)}  y ${p.y.toFixed(2)}  z ${p.z.toFixed(2)}\n` +
      `     yaw ${p.yaw.toFixed(1)}°  pitch ${p.pitch.toFixed(1)}°` : "–";
    const latency = state.latencyMs === null ? "–" : `${state.latencyMs.toFixed(0)} ms/chunk (model ${state.modelMs.toFixed(0)} ms)`;
    $("hud").textContent = `frames/s ${state.decodedFps.toFixed(1)} decoded\n` +
      `latency ${latency}\n` +
      `pose ${pose}\n` +
      `step ${state.chunks}  layout ${state.layout}${state.recording ? "  ● recording" : ""}`;
  }

  // Ask for the next chunk when keys are held (or were tapped) and the page is nearly done
  // showing what it has: the world runs at the pace of the video, one request in flight.
  function pump() {
    if (!state.ready || state.inFlight || modelQueue.length > state.fps / 2) return;
    if (!held.size && !tapped.size) return;
    const keys = Array.from(new Set([...held, ...tapped]));
    tapped.clear();
    state.inFlight = true;
    send({ type: "step", keys });
  }

  function onText(message) {
    switch (message.type) {
      case "hello":
        state.session = message.session; state.fps = message.fps;
        state.mime = message.format === "jpeg" ? "image/jpeg" : "image/png";
        modelCanvas.width = truthCanvas.width = message.width;
        modelCanvas.height = truthCanvas.height = message.height;
        setStatus(`model ${message.model} · world ${message.session} · ${message.clients}/${message.max_clients} in use`);
        break;
      case "start":
        modelQueue.length = 0; truthQueue.length = 0;
        state.ready = true; state.inFlight = false; state.starts += 1; state.chunks = 0;
        state.pose = message.pose; state.layout = message.layout;
        state.truthAvailable = message.truth_available;
        $("show-truth").disabled = !message.truth_available;
        $("truth-view").hidden = !(state.showTruth && state.truthAvailable);
        if (!message.truth_available && state.showTruth) showError("no ground truth for an uploaded start image", false);
        break;
      case "chunk":
        state.inFlight = false; state.chunks = message.step;
        state.latencyMs = message.latency_ms; state.modelMs = message.model_ms; state.pose = message.pose;
        break;
      case "truth":
        $("truth-view").hidden = !(message.on && message.available);
        break;
      case "recording":
        state.recording = message.on;
        $("record").textContent = message.on ? "Stop and download" : "Record";
        $("record").classList.toggle("on", message.on);
        if (message.note) showError(message.note, false);
        break;
      case "error":
        state.inFlight = false;
        showError(message.message, message.fatal);
        break;
    }
  }

  function onBinary(buffer) {
    const bytes = new Uint8Array(buffer);
    const kind = bytes[0], payload = bytes.subarray(2);
    if (kind === KIND_MODEL) enqueue(modelQueue, payload);
    else if (kind === KIND_TRUTH) enqueue(truthQueue, payload);
    else if (kind === KIND_VIDEO) {
      const link = $("download");
      if (link.href) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(new Blob([payload], { type: "video/mp4" }));
      link.hidden = false;
      state.videoBytes = payload.length;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { state.connected = true; };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") onText(JSON.parse(event.data));
      else onBinary(event.data);
    };
    ws.onclose = () => {
      state.connected = false; state.ready = false; state.closed = true;
      setStatus("disconnected — reload the page to play again");
    };
  }

  function keyOf(event) {
    if (event.target && (event.target.tagName === "INPUT" && event.target.type !== "checkbox")) return null;
    if (event.ctrlKey || event.metaKey || event.altKey) return null;
    return KEY_CODES[event.code] || null;
  }

  window.addEventListener("keydown", (event) => {
    const key = keyOf(event);
    if (!key) return;
    event.preventDefault();
    if (!held.has(key)) tapped.add(key);
    held.add(key);
    pump();
  });
  window.addEventListener("keyup", (event) => {
    const key = keyOf(event);
    if (key) { held.delete(key); event.preventDefault(); }
  });
  window.addEventListener("blur", () => held.clear());

  $("reset").addEventListener("click", () => send({ type: "reset" }));
  $("new-scene").addEventListener("click", () => send({ type: "new_scene" }));
  $("show-truth").addEventListener("change", (event) => {
    state.showTruth = event.target.checked;
    truthQueue.length = 0;
    send({ type: "truth", on: state.showTruth });
  });
  $("record").addEventListener("click", () => send({ type: "record", on: !state.recording }));
  $("upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const buffer = await file.arrayBuffer();
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(buffer);
    event.target.value = "";
  });

  window.minwmPlay = { state, send, canvas: { model: modelCanvas, truth: truthCanvas } };
  connect();
  setInterval(tick, 1000 / 16);
  updateHud();
})();
