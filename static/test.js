// Engine test page: create a session with the engine key, then speak protocol v1.
"use strict";
const $ = (id) => document.getElementById(id);
let socket = null;
let engineUrl = null;
const replies = new Map(); // response_id -> <li>

function addLine(cls, text) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function setState(text) { $("state").textContent = text; }

$("setup").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("setup-error").textContent = "";
  const body = {
    tutor_id: "test-page",
    student_id: "test-page",
    tutor: {
      name: $("tutor-name").value,
      system_prompt: $("system-prompt").value,
      greeting: $("greeting").value,
    },
  };
  try {
    const res = await fetch("/v1/sessions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + $("api-key").value },
      body: JSON.stringify(body),
    });
    const data = await res.json();
    if (!res.ok) throw new Error(data.message || res.statusText);
    engineUrl = data.engine_url;
    $("session-id").textContent = "session " + data.session_id;
    $("chat").hidden = false;
    connect();
  } catch (err) {
    $("setup-error").textContent = "Could not start a session: " + err.message;
  }
});

function connect() {
  setState("connecting");
  socket = new WebSocket(engineUrl, ["tutorsrv.v1"]);
  socket.onopen = () => setState("connected");
  socket.onclose = (event) => {
    setState(`closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
    socket = null;
  };
  socket.onmessage = (event) => {
    // Binary frames are the tutor's speech; this page is text only (the chat page plays it).
    if (typeof event.data === "string") handle(JSON.parse(event.data));
  };
}

function handle(msg) {
  switch (msg.type) {
    case "session":
      for (const m of msg.history) addLine(m.role + (m.interrupted ? " interrupted" : ""), m.content);
      break;
    case "text_stream": {
      let li = replies.get(msg.response_id);
      if (!li) { li = addLine("assistant", ""); replies.set(msg.response_id, li); }
      li.textContent += msg.token;
      break;
    }
    case "text": {
      const li = replies.get(msg.response_id) || addLine("assistant", "");
      li.textContent = msg.content;
      break;
    }
    case "interrupted": {
      const li = replies.get(msg.response_id);
      if (li) li.classList.add("interrupted");
      break;
    }
    case "response_done": {
      const m = msg.metrics;
      $("metrics").textContent =
        `first token ${m.ttft_ms} ms · ${m.tokens} tokens · ${m.tokens_per_s ?? "–"} tok/s`;
      break;
    }
    case "error":
      addLine("error", `${msg.code}: ${msg.content}`);
      break;
  }
}

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    addLine("error", "Not connected.");
    return;
  }
  addLine("user", text);
  socket.send(JSON.stringify({ type: "text", content: text }));
  $("message").value = "";
});

$("interrupt").addEventListener("click", () => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "interrupt" }));
});
