// Home page: admin sign-in and registration, student sign-in, and what a signed-in account
// can do next (admins: the console; students: their tutors' chat pages).
"use strict";
import { account, api, busy, formValues, h, saveAccount, showError } from "/static/common.js";

const $ = (id) => document.getElementById(id);

function errorBox(form) {
  return form.querySelector(".error");
}

async function signIn(path, body) {
  const login = await api("POST", path, { body, auth: false });
  // The token alone does not carry a name or email to show; ask once, with the new token.
  saveAccount(login, null);
  const me = await api("GET", "/api/auth/me");
  return saveAccount(login, me);
}

$("admin-login").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  errorBox(form).textContent = "";
  const { email, password } = formValues(form);
  busy(form, async () => {
    try {
      await signIn("/api/auth/login", { email, password });
      window.location.assign("/admin");
    } catch (err) {
      showError(errorBox(form), err, "Could not sign in");
    }
  });
});

$("register").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  errorBox(form).textContent = "";
  const { name, email, password, invite } = formValues(form);
  const body = { name, email, password };
  if (invite) body.invite = invite; // the field is there only when registration needs one
  busy(form, async () => {
    try {
      await signIn("/api/auth/register", body);
      window.location.assign("/admin");
    } catch (err) {
      showError(errorBox(form), err, "Could not register");
    }
  });
});

$("student-login").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  errorBox(form).textContent = "";
  const { email, password, organisation_id } = formValues(form);
  const body = { email, password };
  if (!$("organisation-choice").hidden && organisation_id) body.organisation_id = organisation_id;
  busy(form, async () => {
    try {
      await signIn("/api/students/login", body);
      await showSignedIn();
    } catch (err) {
      if (err.code === "organisation_required") {
        // The same email and password are enrolled by several organisations: ask which.
        $("organisation-choice").hidden = false;
        form.elements.namedItem("organisation_id").focus();
      }
      showError(errorBox(form), err, "Could not sign in");
    }
  });
});

async function showSignedIn() {
  const acc = account();
  $("signed-in").hidden = !acc;
  $("sign-in").hidden = !!acc;
  if (!acc) return;
  const who = acc.name ? `${acc.name} (${acc.email})` : acc.email;
  $("signed-in-text").textContent =
    `You are signed in as ${who}, ${acc.role === "admin" ? "an admin" : "a student"}.`;
  $("admin-links").hidden = acc.role !== "admin";
  $("student-tutors").hidden = acc.role !== "student";
  if (acc.role !== "student") return;
  try {
    const { tutors } = await api("GET", "/api/tutors");
    const list = $("tutor-list");
    list.replaceChildren(
      ...tutors.map((t) =>
        h("li", {},
          h("span", { class: "grow" }, h("strong", { text: t.name }), t.subject ? ` · ${t.subject}` : ""),
          h("a", { class: "button", href: `/tutors/${encodeURIComponent(t.id)}/chat` }, `Chat with ${t.name}`),
        ),
      ),
    );
    $("tutors-empty").hidden = tutors.length > 0;
  } catch (err) {
    showError($("signed-in-error"), err, "Could not list your tutors");
  }
}

showSignedIn();
