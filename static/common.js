// Shared by the pages: the signed-in account, calls to the JSON API, and small DOM helpers.
//
// The account token lives in this tab's sessionStorage only: never in a URL (it would end up
// in logs and Referer headers) and never in localStorage (it should not outlive the tab).
// Pages build their DOM with textContent, never innerHTML, because almost everything they
// show (names, prompts, transcripts, error messages) comes from users.
"use strict";

const ACCOUNT_KEY = "tutorsrv.account";

/** The signed-in account ({token, role, user_id, email, name, expires_at}) or null. */
export function account() {
  let acc = null;
  try {
    acc = JSON.parse(sessionStorage.getItem(ACCOUNT_KEY));
  } catch {
    acc = null;
  }
  if (!acc || typeof acc.token !== "string") return null;
  if (acc.expires_at && Date.now() >= acc.expires_at) {
    // Expired tokens are refused by the API anyway; forgetting it here avoids one failed call.
    sessionStorage.removeItem(ACCOUNT_KEY);
    return null;
  }
  return acc;
}

/** Keep a login answer (and the /api/auth/me profile when known) for this tab. */
export function saveAccount(login, me) {
  const acc = {
    token: login.access_token,
    role: login.role,
    user_id: login.user_id,
    // A little early, so a token never expires between this check and the request.
    expires_at: Date.now() + Math.max(0, login.expires_in - 30) * 1000,
    email: me ? me.email : "",
    name: me ? me.name : "",
    organisation_id: me ? me.organisation_id : "",
  };
  sessionStorage.setItem(ACCOUNT_KEY, JSON.stringify(acc));
  renderAccount();
  return acc;
}

export function signOut() {
  sessionStorage.removeItem(ACCOUNT_KEY);
  renderAccount();
}

/** An error answer of the API, with its stable code and its message for people. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

const HTTP_WORDS = {
  400: "the request was refused",
  401: "you are not signed in",
  403: "this is not allowed",
  404: "not found",
  409: "this conflicts with existing data",
  413: "that is too large",
  415: "that type of content is not accepted",
  422: "a value is not valid",
  429: "too many requests",
  500: "the server hit an internal error",
  502: "the server could not be reached",
  503: "the service is unavailable",
  504: "the server took too long to answer",
};

/**
 * One API call. `body` is sent as JSON, or `form` (a FormData) as multipart. Resolves to the
 * decoded JSON (null for 204); rejects with an ApiError whose message is fit to show.
 */
export async function api(method, path, { body, form, auth = true } = {}) {
  const headers = {};
  const acc = account();
  if (auth && acc) headers.Authorization = "Bearer " + acc.token;
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, credentials: "omit" });
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the server. Check that it is running and try again.");
  }
  if (res.status === 204) return null;
  let data = null;
  if ((res.headers.get("Content-Type") || "").includes("application/json")) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  }
  if (res.ok) return data;
  // The documented error shape is {"error": code, "message": text, "field"?: name}.
  const code = data && typeof data.error === "string" ? data.error : "http_" + res.status;
  let message = data && typeof data.message === "string" && data.message
    ? data.message
    : `${HTTP_WORDS[res.status] || "the request failed"} (HTTP ${res.status})`;
  message = message.charAt(0).toUpperCase() + message.slice(1);
  if (!/[.!?]$/.test(message)) message += ".";
  const retry = res.headers.get("Retry-After");
  if (retry && !/try again|retry/i.test(message)) message += ` Try again in ${retry} s.`;
  if (auth && res.status === 401 && ["invalid_token", "token_expired", "token_revoked"].includes(code)) {
    signOut();
    message = "Your sign-in has expired or is no longer valid. Sign in again on the home page.";
  }
  throw new ApiError(res.status, code, message, data && data.field);
}

/** Show an error in words in `el` (an element with role="alert"). */
export function showError(el, err, prefix = "") {
  const text = err instanceof Error ? err.message : String(err);
  el.textContent = prefix ? `${prefix}: ${text}` : text;
}

/**
 * Build an element: attributes from `attrs` (`class`, `text`, `dataset`, properties, `on*`
 * handlers), then children (nodes or strings, added as text).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A timestamp for people: local date and time to the second. */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

/** Milliseconds for people: "850 ms", "1.2 s". */
export function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Form fields as an object of trimmed strings (passwords exactly as typed). */
export function formValues(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (typeof value !== "string") continue;
    const input = form.elements.namedItem(key);
    out[key] = input && input.type === "password" ? value : value.trim();
  }
  return out;
}

/** Disable a form's buttons while `work` runs, so a double click sends one request. */
export async function busy(form, work) {
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  form.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    form.removeAttribute("aria-busy");
  }
}

function renderAccount() {
  const box = document.getElementById("account");
  if (!box) return;
  const acc = account();
  box.hidden = !acc;
  if (acc) {
    const who = acc.name || acc.email || "signed in";
    document.getElementById("account-name").textContent =
      `${who} (${acc.role === "admin" ? "admin" : "student"})`;
  }
}

document.getElementById("sign-out")?.addEventListener("click", () => {
  signOut();
  window.location.assign("/");
});
renderAccount();

// Labels of the engine's response metrics (response_done, and the transcript's stored copy),
// in the order people read them. Other numeric metrics (newer engines add some) follow under
// their own names.
const METRIC_LABELS = [
  ["ttft_ms", "first token", formatMs],
  ["first_audio_ms", "first audio", formatMs],
  ["duration_ms", "whole reply", formatMs],
  ["tokens", "tokens", String],
  ["tokens_per_s", "tokens/s", (v) => v.toFixed(1)],
  ["prompt_tokens", "prompt tokens", String],
  ["cached_prompt_tokens", "cached prompt tokens", String],
  ["trimmed_messages", "trimmed messages", String],
];

/** [label, value] pairs of a metrics object, the known ones first; absent ones left out. */
export function metricPairs(metrics) {
  if (!metrics || typeof metrics !== "object") return [];
  const pairs = [];
  const known = new Set();
  for (const [key, label, format] of METRIC_LABELS) {
    known.add(key);
    const value = metrics[key];
    if (typeof value === "number" && Number.isFinite(value)) pairs.push([label, format(value), key]);
  }
  for (const [key, value] of Object.entries(metrics)) {
    if (known.has(key) || typeof value !== "number" || !Number.isFinite(value)) continue;
    pairs.push([key.replace(/_/g, " "), key.endsWith("_ms") ? formatMs(value) : String(value), key]);
  }
  return pairs;
}
