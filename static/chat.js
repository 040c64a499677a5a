// A tutor's chat page: start a session through the web API, then speak the engine's
// WebSocket protocol (docs/protocol.md) to the engine_url it returns, which may name this
// server or an engine on another host.
"use strict";
import { account, api, formatTime, h, metricPairs, showError } from "/static/common.js";
import { Mic, Player } from "/static/voice.js";

const $ = (id) => document.getElementById(id);
const tutorId = $("chat-page").dataset.tutorId;

// What each close code means for the student, and whether reconnecting can help. A session
// that ended, expired or is unknown stays so; a dropped connection or a restarting server is
// worth retrying with the same token (a reconnect takes the session over, history kept).
const CLOSE_WORDS = {
  1000: "the connection was closed",
  1001: "the server is shutting down or restarting",
  1006: "the connection was lost",
  1008: "too many messages were sent",
  1009: "a message was too large",
  1011: "the connection to the tutoring engine was lost",
  1013: "the tutoring engine is unavailable for now",
  4401: "the session's token was refused (the engine may have restarted)",
  4403: "the token belongs to another session",
  4404: "the engine does not know this session (it may have restarted)",
  4408: "the session has expired",
  4409: "this session was opened in another tab or window, which took it over",
  4410: "the session has ended",
};
const FINAL_CLOSE_CODES = new Set([1008, 4401, 4403, 4404, 4408, 4409, 4410]);
const RETRY_SECONDS = [1, 2, 4, 8, 15, 30];
const MAX_RETRIES = 8;
const INTERRUPT_WORDS = {
  interrupt: "interrupted",
  new_turn: "interrupted by a new message",
  error: "stopped by an error",
  closing: "cut off as the connection closed",
};

let acc = null;
let tutor = null;
let engineUrl = null;
let sessionId = null;
let socket = null;
let retries = 0;
let retryTimer = null;
let audioFormats = { input: null, output: null };
let generating = null; // response_id of the reply being generated
const replies = new Map(); // response_id -> {li, content}
let hearing = null; // <li> of the student's words being transcribed
let audioContext = null;
let micMode = "hands-free";
let streaming = false; // microphone frames are being sent
let releasing = false; // push-to-talk released: send the flushed rest, then audio_end
let pttHeld = false;
let framesSent = 0;

const player = new Player({
  onPlayed: (responseId, ms) => send({ type: "played", response_id: responseId, audio_ms: ms }),
  onState: (text, ms) => {
    const el = $("audio-state");
    el.textContent = text;
    if (ms !== null) {
      el.dataset.playedMs = String(ms);
      el.dataset.played = String(Number(el.dataset.played || 0) + 1);
    }
  },
});
const mic = new Mic({ onFrame });

// --- page start and session start --------------------------------------------------------

async function init() {
  acc = account();
  if (!acc) {
    $("need-sign-in").hidden = false;
    return;
  }
  $("start").hidden = false;
  const start = $("start-session");
  start.disabled = true;
  try {
    tutor = await api("GET", `/api/tutors/${encodeURIComponent(tutorId)}`);
  } catch (err) {
    showError($("start-error"), err, "Could not load this tutor");
    return;
  }
  $("title").textContent = `Chat with ${tutor.name}`;
  document.title = `Chat with ${tutor.name} · tutorsrv`;
  $("tutor-info").textContent = tutor.subject ? `${tutor.name} · ${tutor.subject}` : tutor.name;
  if (acc.role === "admin") {
    // An admin tests a tutor on behalf of one of its students: sessions belong to students.
    try {
      const { students } = await api("GET", "/api/students");
      $("student").replaceChildren(
        ...students.map((s) => h("option", { value: s.id }, `${s.name} (${s.email})`)),
      );
      $("student-choice").hidden = students.length === 0;
      $("no-students").hidden = students.length > 0;
      if (!students.length) return;
    } catch (err) {
      showError($("start-error"), err, "Could not list your students");
      return;
    }
  }
  start.disabled = false;
  start.focus();
}

function ensureAudioContext() {
  // Browsers start an AudioContext only from a user gesture: this runs in click handlers.
  if (!audioContext) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    audioContext = new Context();
    player.attach(audioContext);
  }
  if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
  return audioContext;
}

async function startSession() {
  ensureAudioContext();
  $("start-error").textContent = "";
  const body = acc.role === "admin" ? { student_id: $("student").value } : {};
  const button = $("start-session");
  button.disabled = true;
  try {
    const created = await api("POST", `/api/tutors/${encodeURIComponent(tutorId)}/sessions`, { body });
    // engine_url carries the session token: it stays in this page's memory, never shown.
    engineUrl = created.engine_url;
    sessionId = created.session_id;
  } catch (err) {
    showError($("start-error"), err, "Could not start a session");
    button.disabled = false;
    return;
  }
  $("start").hidden = true;
  $("chat").hidden = false;
  $("new-session").hidden = true;
  $("reconnect").hidden = false;
  $("end-session").hidden = false;
  $("log").replaceChildren();
  replies.clear();
  retries = 0;
  connect();
}

$("start-session").addEventListener("click", startSession);

$("new-session").addEventListener("click", () => {
  closeSocket();
  stopMic();
  $("chat").hidden = true;
  $("start").hidden = false;
  $("start-session").disabled = false;
  $("start-session").focus();
});

$("end-session").addEventListener("click", async () => {
  if (!sessionId) return;
  try {
    // The engine closes the socket with 4410, which says the rest.
    await api("DELETE", `/api/sessions/${encodeURIComponent(sessionId)}`);
  } catch (err) {
    addNote("error", `Could not end the session: ${err.message}`);
  }
});

// --- connection --------------------------------------------------------------------------

function setConnection(state, detail = "") {
  $("conn-state").textContent = state;
  $("conn-detail").textContent = detail;
  const open = socket !== null && socket.readyState === WebSocket.OPEN;
  $("send").disabled = !open;
  $("interrupt").disabled = !open;
  updateVoiceControls();
}

function connect() {
  clearTimeout(retryTimer);
  closeSocket();
  setConnection(retries ? `reconnecting (attempt ${retries} of ${MAX_RETRIES})…` : "connecting…");
  // The subprotocol asks for the full protocol, speech frames included (docs/protocol.md).
  const ws = new WebSocket(engineUrl, ["tutorsrv.v1"]);
  ws.binaryType = "arraybuffer";
  socket = ws;
  // Events of a socket that has been replaced are ignored: only the newest one counts.
  ws.onopen = () => {
    if (ws === socket) setConnection("connected, waiting for the session…");
  };
  ws.onmessage = (event) => {
    if (ws !== socket) return;
    if (typeof event.data === "string") {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        addNote("error", "The engine sent a message that is not JSON; it was ignored.");
        return;
      }
      handle(msg);
    } else {
      player.push(event.data);
    }
  };
  ws.onclose = (event) => {
    if (ws !== socket) return;
    socket = null;
    closed(event);
  };
}

function closeSocket() {
  clearTimeout(retryTimer);
  const ws = socket;
  socket = null;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
  }
}

function closed(event) {
  player.stop("the connection closed");
  stopMic();
  for (const reply of replies.values()) reply.li.classList.remove("streaming");
  generating = null;
  $("log").setAttribute("aria-busy", "false");
  const words = CLOSE_WORDS[event.code] || `the connection closed (code ${event.code})`;
  const reason = event.reason && !words.includes(event.reason) ? ` — “${event.reason}”` : "";
  if (FINAL_CLOSE_CODES.has(event.code)) {
    const next = event.code === 4409
      ? "Press Reconnect to take it back here."
      : "This session cannot be resumed: start a new session.";
    setConnection(`closed: ${words}`, `Close code ${event.code}${reason}. ${next}`);
    $("reconnect").hidden = event.code !== 4409;
    $("end-session").hidden = true;
    $("new-session").hidden = false;
    return;
  }
  if (retries >= MAX_RETRIES) {
    setConnection(`disconnected: ${words}`,
      `Close code ${event.code}${reason}. Gave up after ${MAX_RETRIES} attempts; press Reconnect to try again.`);
    return;
  }
  const wait = RETRY_SECONDS[Math.min(retries, RETRY_SECONDS.length - 1)];
  retries += 1;
  setConnection(`disconnected: ${words}`,
    `Close code ${event.code}${reason}. Reconnecting in ${wait} s (attempt ${retries} of ${MAX_RETRIES})…`);
  retryTimer = setTimeout(connect, wait * 1000);
}

$("reconnect").addEventListener("click", () => {
  // A new socket with the same token takes the session over; the history comes back.
  retries = 0;
  connect();
});

function send(message) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(message));
  return true;
}

// --- messages from the engine ------------------------------------------------------------

function handle(msg) {
  switch (msg.type) {
    case "session":
      retries = 0;
      audioFormats = msg.audio || { input: null, output: null };
      showHistory(msg.history || []);
      setConnection(msg.resumed ? "connected (resumed)" : "connected",
        msg.expires_at ? `The session ends at the latest at ${formatTime(msg.expires_at)}.` : "");
      if (audioFormats.output) send({ type: "config", audio_output: $("speak-replies").checked });
      $("message").focus();
      break;
    case "text_stream": {
      const reply = replyFor(msg.response_id);
      reply.content.textContent += msg.token;
      if (generating !== msg.response_id) {
        generating = msg.response_id;
        reply.li.classList.add("streaming");
        $("log").setAttribute("aria-busy", "true");
      }
      reply.li.scrollIntoView({ block: "nearest" });
      break;
    }
    case "text": {
      const reply = replyFor(msg.response_id);
      reply.content.textContent = msg.content;
      reply.time.dateTime = msg.timestamp || "";
      reply.time.textContent = formatTime(msg.timestamp);
      break;
    }
    case "sources":
      showSources(replyFor(msg.response_id), msg.sources || []);
      break;
    case "interrupted": {
      player.drop(msg.response_id);
      const reply = replies.get(msg.response_id);
      if (reply) {
        reply.li.classList.remove("streaming");
        reply.li.classList.add("interrupted");
        reply.badge.textContent = INTERRUPT_WORDS[msg.reason] || `interrupted (${msg.reason})`;
        reply.badge.hidden = false;
      }
      replyFinished(msg.response_id);
      break;
    }
    case "response_done":
      showMetrics(msg.metrics || {});
      replies.get(msg.response_id)?.li.classList.remove("streaming");
      replyFinished(msg.response_id);
      break;
    case "error":
      addNote("error", `${msg.fatal ? "The engine is closing the session" : "Error"}: ` +
        `${msg.content} (${msg.code})`);
      break;
    case "speech_started":
      // The student talks over the tutor: silence it at once (barge-in).
      player.stop("you started speaking");
      if (micMode === "hands-free" && streaming) $("mic-state").textContent = "Hearing you…";
      break;
    case "transcription":
      showTranscription(msg.content || "", msg.final === true);
      break;
    case "audio_start":
      if ($("speak-replies").checked) player.begin(msg.response_id, msg);
      break;
    case "audio_end":
      player.end(msg.response_id);
      break;
    default:
      // pong, and message types of later protocol versions.
      break;
  }
}

function replyFinished(responseId) {
  if (generating === responseId) {
    generating = null;
    $("log").setAttribute("aria-busy", "false");
  }
}

function entry(role, text, { timestamp, interrupted } = {}) {
  const name = role === "user" ? "You" : tutor ? tutor.name : "Tutor";
  const time = h("time", { datetime: timestamp || "", text: timestamp ? formatTime(timestamp) : "" });
  const badge = h("span", { class: "badge", text: "interrupted", hidden: !interrupted });
  const content = h("p", { class: "content", text });
  const li = h("li", { class: `msg ${role}${interrupted ? " interrupted" : ""}` },
    h("p", { class: "meta" }, h("strong", { text: name }), " ", time, badge),
    content);
  $("log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return { li, content, time, badge };
}

function addNote(kind, text) {
  const li = h("li", { class: `note-line ${kind}`, role: kind === "error" ? "alert" : null, text });
  $("log").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function replyFor(responseId) {
  let reply = replies.get(responseId);
  if (!reply) {
    reply = entry("assistant", "");
    reply.li.dataset.responseId = responseId;
    replies.set(responseId, reply);
  }
  return reply;
}

function showHistory(history) {
  // The server's history is the truth after a reconnect or takeover: it replaces the log.
  $("log").replaceChildren();
  replies.clear();
  hearing = null;
  for (const m of history) {
    const e = entry(m.role, m.content, { timestamp: m.timestamp, interrupted: m.interrupted });
    if (m.role === "assistant" && m.response_id) replies.set(m.response_id, e);
  }
}

function showSources(reply, sources) {
  if (!sources.length) return;
  reply.li.append(h("details", { class: "sources" },
    h("summary", {}, `Sources (${sources.length})`),
    h("ol", {}, sources.map((s) => h("li", {},
      h("strong", { text: s.document }), s.heading ? ` — ${s.heading}` : "",
      h("br"), h("span", { class: "muted", text: s.excerpt || "" }))))));
}

function showTranscription(text, final) {
  if (!hearing) hearing = entry("user", "").li;
  hearing.classList.toggle("partial", !final);
  hearing.querySelector(".content").textContent = text;
  if (final) {
    const time = hearing.querySelector("time");
    const now = new Date().toISOString();
    time.dateTime = now;
    time.textContent = formatTime(now);
    hearing = null;
    if (micMode === "hands-free" && streaming) $("mic-state").textContent = "Listening…";
  }
}

function showMetrics(metrics) {
  const pairs = metricPairs(metrics);
  $("metrics").replaceChildren(...pairs.flatMap(([label, value, key]) => [
    h("dt", { text: label }), h("dd", { text: value, dataset: { metric: key } }),
  ]));
  if (!pairs.length) $("metrics").append(h("dt", { text: "–" }), h("dd", { text: "no metrics" }));
}

// --- typing ------------------------------------------------------------------------------

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message");
  const text = input.value.trim();
  if (!text) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    addNote("error", "Not connected: the message was not sent. Wait for the connection or press Reconnect.");
    return;
  }
  // A new turn replaces the tutor's current reply, spoken part included.
  player.stop("you sent a message");
  entry("user", text, { timestamp: new Date().toISOString() });
  send({ type: "text", content: text });
  input.value = "";
  input.focus();
});

$("interrupt").addEventListener("click", () => {
  player.stop("you interrupted");
  send({ type: "interrupt" });
});

// --- voice -------------------------------------------------------------------------------

function updateVoiceControls() {
  const open = socket !== null && socket.readyState === WebSocket.OPEN;
  const canCapture = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  const input = audioFormats.input;
  const output = audioFormats.output;
  $("mic").disabled = !open || !input || !canCapture;
  for (const radio of document.querySelectorAll("input[name=mic-mode]")) radio.disabled = !input;
  $("speak-replies").disabled = !output;
  const notes = [];
  if (!input && !output) {
    notes.push("Voice is not available on this engine: it has no speech recognition or speech synthesis. Type instead.");
  } else {
    if (!input) notes.push("This engine has no speech recognition: the microphone is off; type instead.");
    else if (!canCapture) notes.push("This browser allows the microphone only on https:// pages and on localhost.");
    else notes.push(`Microphone: sent as ${input.format}, ${input.sample_rate / 1000} kHz.`);
    if (!output) notes.push("This engine has no speech synthesis: replies are text only.");
  }
  $("voice-note").textContent = notes.join(" ");
  // A warning when something is missing; a plain line when both directions work.
  $("voice-note").className = input && output && canCapture ? "muted" : "note";
  $("mic").textContent = micMode === "push-to-talk"
    ? "Hold to talk"
    : streaming ? "Stop microphone" : "Start microphone";
  $("mic").setAttribute("aria-pressed", String(streaming));
}

function onFrame(frame, last) {
  if ((streaming || releasing) && frame.byteLength && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(frame);
    framesSent += 1;
    $("mic-state").dataset.framesSent = String(framesSent);
  }
  if (last && releasing) {
    releasing = false;
    send({ type: "audio_end" });
  }
}

async function openMic() {
  const ctx = ensureAudioContext();
  if (!ctx) throw new Error("This browser has no Web Audio.");
  await mic.start(ctx);
}

function stopMic() {
  streaming = false;
  releasing = false;
  pttHeld = false;
  mic.stop();
  $("mic-state").textContent = "";
  updateVoiceControls();
}

async function handsFreeToggle() {
  $("voice-error").textContent = "";
  if (streaming) {
    stopMic();
    $("mic-state").textContent = "Microphone off.";
    return;
  }
  try {
    await openMic();
  } catch (err) {
    showError($("voice-error"), micError(err), "Could not start the microphone");
    return;
  }
  streaming = true;
  $("mic-state").textContent = "Listening (hands-free): talk, and the tutor answers when you pause.";
  updateVoiceControls();
}

async function talkStart() {
  if (pttHeld || $("mic").disabled) return;
  pttHeld = true;
  $("voice-error").textContent = "";
  // Talking over the tutor stops it, here at once and on the server.
  player.stop("you started talking");
  if (generating) send({ type: "interrupt" });
  try {
    await openMic();
  } catch (err) {
    pttHeld = false;
    showError($("voice-error"), micError(err), "Could not start the microphone");
    return;
  }
  if (!pttHeld) return; // released while the microphone was opening
  streaming = true;
  $("mic-state").textContent = "Talking… release to send.";
  updateVoiceControls();
}

function talkEnd() {
  if (!pttHeld) return;
  pttHeld = false;
  if (!streaming) return;
  streaming = false;
  releasing = true;
  mic.flush(); // its last frame is followed by audio_end (onFrame)
  $("mic-state").textContent = "Sent; waiting for the tutor.";
  updateVoiceControls();
}

function micError(err) {
  if (err && err.name === "NotAllowedError") return new Error("the browser was not allowed to use the microphone.");
  if (err && err.name === "NotFoundError") return new Error("no microphone was found.");
  return err;
}

$("mic").addEventListener("click", () => {
  if (micMode === "hands-free") handsFreeToggle();
});
$("mic").addEventListener("pointerdown", (event) => {
  if (micMode !== "push-to-talk" || event.button !== 0) return;
  $("mic").setPointerCapture(event.pointerId);
  talkStart();
});
for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
  $("mic").addEventListener(type, () => {
    if (micMode === "push-to-talk") talkEnd();
  });
}

/** Whether the space bar belongs to the focused element (typing, or ticking a checkbox). */
function spaceTarget(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable || ["TEXTAREA", "SELECT"].includes(target.tagName)) return true;
  return target.tagName === "INPUT" && target.type !== "radio";
}

// Push-to-talk on the space bar: anywhere but in a text field or on another button.
document.addEventListener("keydown", (event) => {
  if (micMode !== "push-to-talk" || event.code !== "Space" || spaceTarget(event.target)) return;
  if (event.target instanceof HTMLButtonElement && event.target !== $("mic")) return;
  event.preventDefault(); // no page scroll, and no click on the focused button
  if (!event.repeat) talkStart();
});
document.addEventListener("keyup", (event) => {
  if (micMode !== "push-to-talk" || event.code !== "Space") return;
  if (pttHeld) {
    event.preventDefault();
    talkEnd();
  }
});

for (const radio of document.querySelectorAll("input[name=mic-mode]")) {
  radio.addEventListener("change", () => {
    if (!radio.checked) return;
    stopMic();
    micMode = radio.value;
    $("mic-state").textContent = micMode === "push-to-talk"
      ? "Hold the button, or the space bar, while you talk."
      : "";
    updateVoiceControls();
  });
}

$("speak-replies").addEventListener("change", (event) => {
  const on = event.currentTarget.checked;
  if (on) ensureAudioContext();
  else player.stop("speech turned off");
  send({ type: "config", audio_output: on });
});

init();
