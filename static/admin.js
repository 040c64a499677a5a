// Admin console: tutors, students, knowledge bases and sessions with their transcripts, all
// through the JSON API with the admin's token.
"use strict";
import {
  account, api, busy, formatTime, formValues, h, metricPairs, saveAccount, showError, signOut,
} from "/static/common.js";

const $ = (id) => document.getElementById(id);
let kbs = [];
// Knowledge bases whose document panel is open, and the poll that follows ingestion.
const openKbs = new Set();
let documentPoll = null;

function say(form, text) {
  form.querySelector(".error").textContent = "";
  form.querySelector(".ok").textContent = text;
}

function fail(form, err, prefix) {
  form.querySelector(".ok").textContent = "";
  showError(form.querySelector(".error"), err, prefix);
}

/** An error box placed right after a list item's buttons, for actions on that item. */
function itemError(li) {
  let box = li.querySelector(":scope > .error");
  if (!box) {
    box = h("p", { class: "error full", role: "alert" });
    li.append(box);
  }
  return box;
}

async function confirmed(question) {
  return window.confirm(question);
}

// --- tutors ------------------------------------------------------------------------------

const tutorForm = $("tutor-form");

async function loadTutors() {
  const { tutors } = await api("GET", "/api/tutors");
  const kbName = (id) => (kbs.find((k) => k.id === id) || {}).name || "a deleted knowledge base";
  $("tutor-list").replaceChildren(
    ...tutors.map((t) => {
      const li = h("li", { dataset: { id: t.id } },
        h("span", { class: "grow" },
          h("strong", { text: t.name }),
          t.subject ? ` · ${t.subject}` : "",
          t.kb_id ? h("span", { class: "muted" }, ` · knowledge base: ${kbName(t.kb_id)}`) : ""),
        h("a", { class: "button", href: `/tutors/${encodeURIComponent(t.id)}/chat` }, "Open chat"),
        h("button", { type: "button", onclick: () => editTutor(t) }, "Edit"),
        h("button", { type: "button", class: "danger", onclick: () => deleteTutor(t, li) }, "Delete"),
      );
      return li;
    }),
  );
  $("tutors-empty").hidden = tutors.length > 0;
}

function fillKbSelect(select, selected) {
  select.replaceChildren(
    h("option", { value: "" }, "None"),
    ...kbs.map((k) => h("option", { value: k.id, selected: k.id === selected }, k.name)),
  );
}

function editTutor(t) {
  const f = tutorForm.elements;
  for (const name of ["id", "name", "subject", "system_prompt", "greeting", "language", "voice"]) {
    f.namedItem(name).value = t[name] ?? "";
  }
  f.namedItem("model").value = t.model ?? "";
  f.namedItem("max_reply_tokens").value = t.max_reply_tokens ?? "";
  fillKbSelect(f.namedItem("kb_id"), t.kb_id);
  $("tutor-form-title").textContent = `Edit tutor “${t.name}”`;
  $("tutor-submit").textContent = "Save changes";
  $("tutor-cancel").hidden = false;
  say(tutorForm, "");
  f.namedItem("name").focus();
}

function resetTutorForm() {
  tutorForm.reset();
  tutorForm.elements.namedItem("id").value = "";
  fillKbSelect(tutorForm.elements.namedItem("kb_id"), null);
  $("tutor-form-title").textContent = "New tutor";
  $("tutor-submit").textContent = "Create tutor";
  $("tutor-cancel").hidden = true;
}

$("tutor-cancel").addEventListener("click", () => {
  resetTutorForm();
  say(tutorForm, "");
});

tutorForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const v = formValues(tutorForm);
  const body = {
    name: v.name,
    subject: v.subject,
    system_prompt: v.system_prompt,
    greeting: v.greeting,
    language: v.language || "en",
    voice: v.voice,
    model: v.model || null,
    max_reply_tokens: v.max_reply_tokens ? Number(v.max_reply_tokens) : null,
    kb_id: v.kb_id || null,
  };
  busy(tutorForm, async () => {
    try {
      // Editing sends every field, so PUT (replace) says exactly what the form shows.
      const tutor = v.id
        ? await api("PUT", `/api/tutors/${encodeURIComponent(v.id)}`, { body })
        : await api("POST", "/api/tutors", { body });
      resetTutorForm();
      say(tutorForm, v.id ? `Saved tutor “${tutor.name}”.` : `Created tutor “${tutor.name}”.`);
      await loadTutors();
    } catch (err) {
      fail(tutorForm, err, v.id ? "Could not save the tutor" : "Could not create the tutor");
    }
  });
});

async function deleteTutor(t, li) {
  if (!(await confirmed(`Delete tutor “${t.name}” with all its sessions and transcripts?`))) return;
  try {
    await api("DELETE", `/api/tutors/${encodeURIComponent(t.id)}`);
    if (tutorForm.elements.namedItem("id").value === t.id) resetTutorForm();
    await Promise.all([loadTutors(), loadSessions()]);
  } catch (err) {
    showError(itemError(li), err, "Could not delete the tutor");
  }
}

// --- students ----------------------------------------------------------------------------

const studentForm = $("student-form");

async function loadStudents() {
  const { students } = await api("GET", "/api/students");
  $("student-list").replaceChildren(...students.map(studentItem));
  $("students-empty").hidden = students.length > 0;
}

function studentItem(s) {
  const li = h("li", { dataset: { id: s.id } });
  const reset = h("form", { class: "inline full", hidden: true },
    h("label", {}, `New password for ${s.name}`,
      h("input", { type: "password", name: "password", required: true, minlength: "8", autocomplete: "new-password" })),
    h("button", { type: "submit" }, "Set password"),
    h("button", { type: "button", onclick: () => { reset.hidden = true; } }, "Cancel"),
  );
  reset.addEventListener("submit", (event) => {
    event.preventDefault();
    const password = reset.elements.namedItem("password").value;
    busy(reset, async () => {
      try {
        await api("PATCH", `/api/students/${encodeURIComponent(s.id)}`, { body: { password } });
        reset.hidden = true;
        reset.reset();
        itemError(li).textContent = "";
        li.querySelector(".ok").textContent = `Password of ${s.name} reset.`;
      } catch (err) {
        showError(itemError(li), err, "Could not reset the password");
      }
    });
  });
  li.append(
    h("span", { class: "grow" }, h("strong", { text: s.name }), ` · ${s.email}`),
    h("button", { type: "button", onclick: () => {
      reset.hidden = false;
      reset.elements.namedItem("password").focus();
    } }, "Reset password"),
    h("button", { type: "button", class: "danger", onclick: () => deleteStudent(s, li) }, "Delete"),
    reset,
    h("p", { class: "ok full", role: "status" }),
  );
  return li;
}

studentForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const { name, email, password } = formValues(studentForm);
  busy(studentForm, async () => {
    try {
      const student = await api("POST", "/api/students", { body: { name, email, password } });
      studentForm.reset();
      say(studentForm, `Enrolled ${student.name} (${student.email}).`);
      await loadStudents();
    } catch (err) {
      fail(studentForm, err, "Could not enrol the student");
    }
  });
});

async function deleteStudent(s, li) {
  if (!(await confirmed(`Delete student ${s.name} with all their sessions and transcripts?`))) return;
  try {
    await api("DELETE", `/api/students/${encodeURIComponent(s.id)}`);
    await Promise.all([loadStudents(), loadSessions()]);
  } catch (err) {
    showError(itemError(li), err, "Could not delete the student");
  }
}

// --- knowledge bases ---------------------------------------------------------------------

const kbForm = $("kb-form");

async function loadKbs() {
  ({ kbs } = await api("GET", "/api/kbs"));
  const select = tutorForm.elements.namedItem("kb_id");
  fillKbSelect(select, select.value || null);
  $("kb-list").replaceChildren(...kbs.map(kbItem));
  $("kbs-empty").hidden = kbs.length > 0;
  for (const id of [...openKbs]) {
    if (!kbs.some((k) => k.id === id)) openKbs.delete(id);
  }
  await loadDocuments();
}

function kbItem(kb) {
  const panelId = `kb-docs-${kb.id}`;
  const li = h("li", { dataset: { id: kb.id } });
  const toggle = h("button", {
    type: "button", "aria-expanded": String(openKbs.has(kb.id)), "aria-controls": panelId,
  }, "Documents");
  const upload = h("form", { class: "inline" },
    h("label", {}, "Upload a file",
      h("input", { type: "file", name: "file", required: true, accept: ".txt,.md,.markdown,.html,.htm,.pdf" })),
    h("button", { type: "submit" }, "Upload"),
  );
  const panel = h("div", { id: panelId, class: "panel full", hidden: !openKbs.has(kb.id) },
    h("ul", { class: "documents", "aria-label": `Documents of ${kb.name}` }),
    upload,
    h("p", { class: "error", role: "alert" }),
    h("p", { class: "ok", role: "status" }),
  );
  toggle.addEventListener("click", () => {
    const open = panel.hidden;
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) openKbs.add(kb.id);
    else openKbs.delete(kb.id);
    loadDocuments();
  });
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = upload.elements.namedItem("file");
    if (!input.files.length) return;
    const form = new FormData();
    form.append("file", input.files[0]);
    panel.querySelector(".error").textContent = "";
    busy(upload, async () => {
      try {
        const doc = await api("POST", `/api/kbs/${encodeURIComponent(kb.id)}/documents`, { form });
        upload.reset();
        panel.querySelector(".ok").textContent =
          `${doc.replaced ? "Replaced" : "Uploaded"} ${doc.filename}; it is being read.`;
        await loadDocuments();
      } catch (err) {
        panel.querySelector(".ok").textContent = "";
        showError(panel.querySelector(".error"), err, "Could not upload the file");
      }
    });
  });
  li.append(
    h("span", { class: "grow" }, h("strong", { text: kb.name }),
      kb.description ? ` · ${kb.description}` : "",
      h("span", { class: "muted" }, ` · ${kb.language} · `,
        h("span", { class: "kb-count", text: documentCount(kb.documents ?? 0) }))),
    toggle,
    h("button", { type: "button", class: "danger", onclick: () => deleteKb(kb, li) }, "Delete"),
    panel,
  );
  return li;
}

function documentCount(n) {
  return `${n} document${n === 1 ? "" : "s"}`;
}

function documentItem(kb, doc) {
  let state = doc.status;
  if (doc.status === "processing") state = `processing, ${Math.round((doc.progress || 0) * 100)}%`;
  else if (doc.status === "ready") state = `ready, ${doc.chunks} chunk${doc.chunks === 1 ? "" : "s"}`;
  const li = h("li", { class: `document ${doc.status}` },
    h("span", { class: "grow" }, h("strong", { text: doc.filename }), ` · ${state}`,
      doc.status === "processing"
        ? h("progress", { max: "1", value: String(doc.progress || 0), "aria-label": `Progress of ${doc.filename}` })
        : ""),
    h("button", { type: "button", class: "danger", onclick: async () => {
      if (!(await confirmed(`Delete ${doc.filename}?`))) return;
      try {
        await api("DELETE", `/api/kbs/${encodeURIComponent(kb.id)}/documents/${encodeURIComponent(doc.id)}`);
        await loadKbs();
      } catch (err) {
        showError(itemError(li), err, "Could not delete the document");
      }
    } }, "Delete"),
  );
  if (doc.error) li.append(h("p", { class: "error full", text: `Failed: ${doc.error}` }));
  return li;
}

/** Refresh the open document panels; poll while a document is still being read. */
async function loadDocuments() {
  clearTimeout(documentPoll);
  let processing = false;
  for (const id of openKbs) {
    const kb = kbs.find((k) => k.id === id);
    const panel = $(`kb-docs-${id}`);
    if (!kb || !panel) continue;
    try {
      const { documents } = await api("GET", `/api/kbs/${encodeURIComponent(id)}/documents`);
      const list = panel.querySelector(".documents");
      list.replaceChildren(...documents.map((d) => documentItem(kb, d)));
      if (!documents.length) list.append(h("li", { class: "muted", text: "No documents yet." }));
      panel.closest("li").querySelector(".kb-count").textContent = documentCount(documents.length);
      processing ||= documents.some((d) => d.status === "processing");
    } catch (err) {
      showError(panel.querySelector(".error"), err, "Could not list the documents");
    }
  }
  if (processing) documentPoll = setTimeout(loadDocuments, 1000);
}

kbForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const { name, description, language } = formValues(kbForm);
  busy(kbForm, async () => {
    try {
      const kb = await api("POST", "/api/kbs", { body: { name, description, language: language || "english" } });
      kbForm.reset();
      openKbs.add(kb.id);
      say(kbForm, `Created knowledge base “${kb.name}”. Upload its documents above.`);
      await loadKbs();
    } catch (err) {
      fail(kbForm, err, "Could not create the knowledge base");
    }
  });
});

async function deleteKb(kb, li) {
  if (!(await confirmed(`Delete knowledge base “${kb.name}” and its documents?`))) return;
  try {
    await api("DELETE", `/api/kbs/${encodeURIComponent(kb.id)}`);
    openKbs.delete(kb.id);
    await loadKbs();
    await loadTutors();
  } catch (err) {
    showError(itemError(li), err, "Could not delete the knowledge base");
  }
}

// --- sessions and transcripts ------------------------------------------------------------

async function loadSessions() {
  $("sessions-error").textContent = "";
  try {
    const { sessions } = await api("GET", "/api/sessions");
    $("session-list").replaceChildren(...sessions.map(sessionItem));
    $("sessions-empty").hidden = sessions.length > 0;
  } catch (err) {
    showError($("sessions-error"), err, "Could not list the sessions");
  }
}

function sessionItem(s) {
  const li = h("li", { dataset: { id: s.id } },
    h("span", { class: "grow" },
      h("strong", {}, `${s.tutor_name} with ${s.student_name}`),
      ` · ${s.status} · ${s.turns} turn${s.turns === 1 ? "" : "s"}`,
      h("span", { class: "muted" }, ` · started ${formatTime(s.created_at)}`)),
    h("button", { type: "button", onclick: () => showTranscript(s, li) }, "Transcript"),
  );
  if (s.status === "active") {
    li.append(h("button", { type: "button", class: "danger", onclick: async () => {
      if (!(await confirmed(`End the session of ${s.student_name} with ${s.tutor_name}?`))) return;
      try {
        await api("DELETE", `/api/sessions/${encodeURIComponent(s.id)}`);
        await loadSessions();
      } catch (err) {
        showError(itemError(li), err, "Could not end the session");
      }
    } }, "End"));
  }
  return li;
}

async function showTranscript(s, li) {
  let data;
  try {
    data = await api("GET", `/api/sessions/${encodeURIComponent(s.id)}/messages`);
  } catch (err) {
    showError(itemError(li), err, "Could not read the transcript");
    return;
  }
  const names = { user: s.student_name, assistant: s.tutor_name };
  $("transcript-title").textContent = `Transcript: ${s.tutor_name} with ${s.student_name}`;
  $("transcript-info").textContent =
    `Session ${s.id} · ${s.status} · started ${formatTime(s.created_at)}` +
    (s.ended_at ? ` · ended ${formatTime(s.ended_at)}` : "");
  $("transcript-list").replaceChildren(...data.messages.map((m) => transcriptEntry(m, names)));
  $("transcript-empty").hidden = data.messages.length > 0;
  $("transcript").hidden = false;
  $("transcript").focus();
}

function transcriptEntry(m, names) {
  const li = h("li", { class: `msg ${m.role}${m.interrupted ? " interrupted" : ""}` },
    h("p", { class: "meta" },
      h("strong", { text: names[m.role] || m.role }),
      " ",
      h("time", { datetime: m.timestamp, text: formatTime(m.timestamp) }),
      m.interrupted ? h("span", { class: "badge", text: "interrupted" }) : ""),
    h("p", { class: "content", text: m.content || (m.interrupted ? "(cut off before any words)" : "") }),
  );
  const pairs = metricPairs(m.metrics);
  if (pairs.length) {
    li.append(h("p", { class: "latency", "aria-label": "Latency and size of this reply" },
      pairs.map(([label, value]) => `${label} ${value}`).join(" · ")));
  }
  if (Array.isArray(m.sources) && m.sources.length) {
    li.append(h("details", {},
      h("summary", {}, `Sources (${m.sources.length})`),
      h("ol", {}, m.sources.map((src) => h("li", {},
        h("strong", { text: src.document }), src.heading ? ` — ${src.heading}` : "",
        h("br"), h("span", { class: "muted", text: src.excerpt || "" }))))));
  }
  return li;
}

$("sessions-refresh").addEventListener("click", loadSessions);

// --- your account ------------------------------------------------------------------------

const passwordForm = $("password-form");
passwordForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const { current_password, new_password } = formValues(passwordForm);
  busy(passwordForm, async () => {
    try {
      const login = await api("POST", "/api/auth/password", { body: { current_password, new_password } });
      // The answer is this tab's new token: every earlier one, ours too, is revoked.
      const acc = account();
      saveAccount(login, acc && { email: acc.email, name: acc.name, organisation_id: acc.organisation_id });
      passwordForm.reset();
      say(passwordForm, "Password changed. Other devices are signed out.");
    } catch (err) {
      fail(passwordForm, err, "Could not change the password");
    }
  });
});

const signOutForm = $("sign-out-everywhere-form");
signOutForm.addEventListener("submit", (event) => {
  event.preventDefault();
  busy(signOutForm, async () => {
    if (!(await confirmed("Sign out on every device, this one too?"))) return;
    try {
      await api("POST", "/api/auth/sign-out");
      signOut();
      window.location.assign("/");
    } catch (err) {
      fail(signOutForm, err, "Could not sign out everywhere");
    }
  });
});

// --- start -------------------------------------------------------------------------------

async function start() {
  const acc = account();
  if (!acc || acc.role !== "admin") {
    $("need-admin").hidden = false;
    return;
  }
  $("console").hidden = false;
  $("org-id").textContent = acc.organisation_id || acc.user_id;
  const sections = [
    [tutorForm, async () => { await loadKbs(); await loadTutors(); }, "Could not load the tutors and knowledge bases"],
    [studentForm, loadStudents, "Could not load the students"],
  ];
  await Promise.all([
    ...sections.map(async ([form, load, prefix]) => {
      try {
        await load();
      } catch (err) {
        showError(form.querySelector(".error"), err, prefix);
      }
    }),
    loadSessions(),
  ]);
  if (!account()) {
    // The token was refused (expired, or the account was deleted): the errors say so.
    $("need-admin").hidden = false;
  }
}

start();
