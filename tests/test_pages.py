"""The built-in pages in a real browser (headless Chromium): sign-in, the admin console, the
chat page (text, streaming, interrupt, reconnect, the voice client against a stand-in engine),
phone-sized screens and keyboard use. Screenshots go to each test's tmp_path."""

from __future__ import annotations

import json
import math
import re
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    Page,
    Playwright,
    WebSocketRoute,
    expect,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from .browser import (
    PHONE,
    Tenant,
    api,
    launch,
    make_tenant,
    no_horizontal_scroll,
    running_server,
    sign_in_admin,
    sign_in_student,
)
from .processes import ServerProcess
from .web_helpers import PASSWORD

pytestmark = pytest.mark.browser

# Replies echo the student's words one by one, 40 ms apart: slow enough to watch streaming
# and to interrupt, and a longer message makes a longer reply.
SCRIPTED = {
    "TUTORSRV_LLM_BACKEND": "scripted",
    "TUTORSRV_LLM_SCRIPTED_TEXT": "You said: {message}. That is a good question.",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "40",
}
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(postgres_url, tmp_path_factory.mktemp("pages-server"), SCRIPTED) as s:
        yield s


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch(playwright)
    yield browser
    browser.close()


def open_page(browser: Browser, tmp_path: Path, **context: Any) -> tuple[Page, list[str]]:
    context.setdefault("viewport", {"width": 1280, "height": 900})
    page = browser.new_context(**context).new_page()
    errors: list[str] = []
    # Uncaught exceptions and unhandled rejections in the page's scripts fail the test.
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())  # the console's "Delete …?" confirmations
    return page, errors


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    page, errors = open_page(browser, tmp_path)
    yield page
    page.screenshot(path=tmp_path / "last.png", full_page=True)
    page.context.close()
    assert not errors, errors


def shot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


def start_chat(page: Page, base: str, tutor_id: str) -> None:
    page.goto(f"{base}/tutors/{tutor_id}/chat")
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#conn-state")).to_have_text("connected")


def send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.get_by_role("button", name="Send").click()


def watch_stream(page: Page) -> list[str]:
    """The reply's text each time it changed while it was streaming."""
    streaming = page.locator("#log li.msg.assistant.streaming .content")
    streaming.wait_for()
    seen: list[str] = []
    while streaming.count():
        try:
            text = streaming.inner_text(timeout=500)
        except PlaywrightTimeout:  # the reply finished between the two calls
            break
        if not seen or seen[-1] != text:
            seen.append(text)
        time.sleep(0.01)
    return seen


def last_reply(page: Page) -> Any:
    return page.locator("#log li.msg.assistant").last


# --- the main path: register, tutor, chat, transcript --------------------------------------


def test_register_create_tutor_chat_and_read_the_transcript(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    base = server.base
    page.goto(base + "/")
    expect(page.get_by_text("tutorsrv is running.")).to_be_visible()
    shot(page, tmp_path, "1-home")
    form = page.locator("#register")
    form.get_by_label("Your name").fill("Ms Admin")
    form.get_by_label("Email").fill(f"admin-{uuid.uuid4().hex[:8]}@school.example")
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Register").click()
    page.wait_for_url(base + "/admin")
    expect(page.locator("#account")).to_contain_text("Ms Admin (admin)")
    # The token is in this tab's sessionStorage, never in a URL.
    assert "eyJ" not in page.url
    kept = json.loads(page.evaluate("sessionStorage.getItem('tutorsrv.account')"))
    assert kept["token"].startswith("eyJ") and kept["role"] == "admin"

    tutor_form = page.locator("#tutor-form")
    tutor_form.get_by_label("Name").fill("Ada")
    tutor_form.get_by_label("Subject").fill("maths")
    tutor_form.get_by_label("Persona").fill("You are Ada, a patient maths tutor.")
    tutor_form.get_by_label("Greeting").fill("Hello! What shall we work on?")
    tutor_form.get_by_role("button", name="Create tutor").click()
    expect(tutor_form.get_by_role("status")).to_have_text("Created tutor “Ada”.")
    student_form = page.locator("#student-form")
    student_form.get_by_label("Name").fill("Sam")
    student_form.get_by_label("Email").fill("sam@school.example")
    student_form.get_by_label("Password").fill(PASSWORD)
    student_form.get_by_role("button", name="Enrol student").click()
    expect(student_form.get_by_role("status")).to_have_text("Enrolled Sam (sam@school.example).")
    shot(page, tmp_path, "2-admin")

    page.locator("#tutor-list li", has_text="Ada").get_by_role("link", name="Open chat").click()
    expect(page.get_by_role("heading", name="Chat with Ada")).to_be_visible()
    expect(page.get_by_label("Talk as student")).to_contain_text("Sam (sam@school.example)")
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(last_reply(page).locator(".content")).to_have_text("Hello! What shall we work on?")
    # This engine has no voice: the microphone is off and the page says why.
    expect(page.locator("#mic")).to_be_disabled()
    expect(page.locator("#voice-note")).to_contain_text("Voice is not available on this engine")

    send(page, "What is seven times eight?")
    seen = watch_stream(page)
    final = "You said: What is seven times eight?. That is a good question."
    expect(last_reply(page).locator(".content")).to_have_text(final)
    # Token by token: several growing prefixes of the reply were on screen before the end.
    assert len(seen) >= 3, seen
    assert all(final.startswith(s) for s in seen), seen
    assert [len(s) for s in seen] == sorted({len(s) for s in seen}), seen
    expect(page.locator("#metrics [data-metric=ttft_ms]")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator("#metrics [data-metric=tokens]")).to_have_text("12")
    shot(page, tmp_path, "3-chat")

    page.get_by_role("link", name="Admin").click()
    session = page.locator("#session-list li", has_text="Ada with Sam")
    expect(session).to_contain_text("2 turns")
    session.get_by_role("button", name="Transcript").click()
    transcript = page.locator("#transcript-list > li")
    expect(transcript).to_have_count(3)  # the greeting, the question, the reply
    expect(transcript.nth(0)).to_contain_text("Hello! What shall we work on?")
    expect(transcript.nth(1)).to_contain_text("Sam")
    expect(transcript.nth(1)).to_contain_text("What is seven times eight?")
    expect(transcript.nth(2)).to_contain_text(final)
    expect(transcript.nth(2).locator(".latency")).to_contain_text("first token")
    expect(transcript.nth(2).locator(".latency")).to_contain_text("tokens 12")
    assert transcript.nth(2).locator("time").get_attribute("datetime")
    expect(page.locator("#transcript .badge")).to_have_count(0)
    shot(page, tmp_path, "4-transcript")


def test_interrupt_stops_the_reply_and_the_transcript_marks_it(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    tenant = make_tenant(server.base)
    sign_in_admin(page, server.base, tenant.email)
    start_chat(page, server.base, tenant.tutor["id"])
    long_message = " ".join(f"word{i}" for i in range(60))  # a reply of ~2.8 s
    send(page, long_message)
    page.locator("#log li.msg.assistant.streaming").wait_for()
    page.get_by_role("button", name="Interrupt").click()
    reply = last_reply(page)
    expect(reply).to_have_class(re.compile(r"\binterrupted\b"))
    expect(reply.locator(".badge")).to_have_text("interrupted")
    cut = reply.locator(".content").inner_text()
    assert cut.startswith("You said:") and not cut.endswith("good question."), cut
    shot(page, tmp_path, "chat-interrupted")

    page.goto(server.base + "/admin")
    page.locator("#session-list li").first.get_by_role("button", name="Transcript").click()
    reply_entry = page.locator("#transcript-list > li.assistant").last
    expect(reply_entry.locator(".badge")).to_have_text("interrupted")
    expect(reply_entry).to_contain_text("You said:")
    shot(page, tmp_path, "transcript-interrupted")


def test_reconnect_takes_the_session_over_and_an_ended_session_is_final(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    tenant = make_tenant(server.base, greeting="Hi there.")
    sign_in_admin(page, server.base, tenant.email)
    start_chat(page, server.base, tenant.tutor["id"])
    send(page, "first question")
    expect(last_reply(page).locator(".content")).to_contain_text("good question.")

    page.get_by_role("button", name="Reconnect").click()
    expect(page.locator("#conn-state")).to_have_text("connected (resumed)")
    # The server's history came back: greeting, question, reply.
    expect(page.locator("#log li.msg")).to_have_count(3)
    send(page, "second question")
    expect(last_reply(page).locator(".content")).to_contain_text("You said: second question.")

    page.get_by_role("button", name="End session").click()
    expect(page.locator("#conn-state")).to_have_text("closed: the session has ended")
    expect(page.locator("#conn-detail")).to_contain_text("Close code 4410")
    expect(page.locator("#conn-detail")).to_contain_text("start a new session")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(page.get_by_role("button", name="Reconnect")).to_be_hidden()
    shot(page, tmp_path, "ended")
    page.get_by_role("button", name="Start a new session").click()
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(last_reply(page).locator(".content")).to_have_text("Hi there.")


def test_lost_connections_are_retried_and_final_close_codes_are_explained(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    """The engine's side is played by a stand-in socket: it drops the first connection as a
    server going down does (1001), then says the session expired (4408)."""
    tenant = make_tenant(server.base)
    connections: list[WebSocketRoute] = []

    def engine(ws: WebSocketRoute) -> None:
        connections.append(ws)
        ws.send(json.dumps(session_frame(resumed=len(connections) > 1)))

    page.route_web_socket("**/ws/ws/**", engine)
    sign_in_admin(page, server.base, tenant.email)
    start_chat(page, server.base, tenant.tutor["id"])
    connections[0].close(code=1001, reason="server shutting down")
    expect(page.locator("#conn-state")).to_have_text(
        "disconnected: the server is shutting down or restarting"
    )
    expect(page.locator("#conn-detail")).to_contain_text("Reconnecting in 1 s (attempt 1 of 8)")
    shot(page, tmp_path, "retrying")
    expect(page.locator("#conn-state")).to_have_text("connected (resumed)")
    assert len(connections) == 2
    connections[1].close(code=4408, reason="session expired")
    expect(page.locator("#conn-state")).to_have_text("closed: the session has expired")
    expect(page.locator("#conn-detail")).to_contain_text("cannot be resumed")
    page.wait_for_timeout(1500)
    assert len(connections) == 2  # no retry after a final close code
    shot(page, tmp_path, "expired")


# --- students -------------------------------------------------------------------------------


def test_student_signs_in_and_chats(server: ServerProcess, page: Page, tmp_path: Path) -> None:
    tenant = make_tenant(server.base, greeting="Welcome, Sam.")
    sign_in_student(page, server.base, tenant.student["email"])
    expect(page.locator("#signed-in-text")).to_contain_text("a student")
    link = page.get_by_role("link", name="Chat with Ada")
    shot(page, tmp_path, "student-home")
    link.click()
    expect(page.locator("#student-choice")).to_be_hidden()  # a student talks as itself
    page.get_by_role("button", name="Start session").click()
    expect(last_reply(page).locator(".content")).to_have_text("Welcome, Sam.")
    send(page, "hello from Sam")
    expect(last_reply(page).locator(".content")).to_have_text(
        "You said: hello from Sam. That is a good question."
    )
    shot(page, tmp_path, "student-chat")
    status, sessions = api(server.base, "GET", "/api/sessions", tenant.token)
    assert status == 200 and sessions["sessions"][0]["student_name"] == "Sam"
    # The admin console is for admins: a student is told so, and sees none of it.
    page.get_by_role("link", name="Admin").click()
    expect(page.locator("#need-admin")).to_be_visible()
    expect(page.locator("#console")).to_be_hidden()


def test_student_of_several_organisations_chooses_one(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    email = f"twin-{uuid.uuid4().hex[:8]}@school.example"
    first = make_tenant(server.base, student_email=email)
    make_tenant(server.base, student_email=email)
    sign_in_student(page, server.base, email)
    form = page.locator("#student-login")
    expect(form.get_by_role("alert")).to_contain_text("Could not sign in:")
    expect(form.get_by_role("alert")).to_contain_text("organisation")
    organisation = form.get_by_label("Organisation id")
    expect(organisation).to_be_focused()
    shot(page, tmp_path, "organisation-required")
    organisation.fill(first.admin_id)
    form.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signed-in-text")).to_contain_text("a student")
    expect(page.get_by_role("link", name="Chat with Ada")).to_be_visible()


# --- errors, phones, keyboards --------------------------------------------------------------


def test_api_errors_are_shown_in_words(server: ServerProcess, page: Page, tmp_path: Path) -> None:
    tenant = make_tenant(server.base)
    page.goto(server.base + "/")
    login = page.locator("#admin-login")
    login.get_by_label("Email").fill(tenant.email)
    login.get_by_label("Password").fill("not the password")
    login.get_by_role("button", name="Sign in").click()
    expect(login.get_by_role("alert")).to_have_text(
        re.compile(r"^Could not sign in: .*password.*\.$", re.I)
    )

    sign_in_admin(page, server.base, tenant.email)
    form = page.locator("#student-form")
    form.get_by_label("Name").fill("Sam again")
    form.get_by_label("Email").fill(tenant.student["email"].upper())
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Enrol student").click()
    expect(form.get_by_role("alert")).to_have_text(
        "Could not enrol the student: A student with this email is already enrolled."
    )
    shot(page, tmp_path, "duplicate-student")

    page.goto(f"{server.base}/tutors/{uuid.uuid4()}/chat")
    expect(page.locator("#start-error")).to_have_text("Could not load this tutor: No such tutor.")
    expect(page.get_by_role("button", name="Start session")).to_be_disabled()


def test_phone_sized_screens_do_not_scroll_sideways(
    server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    tenant = make_tenant(server.base, greeting="Hello! " + "A long greeting. " * 10)
    page, errors = open_page(browser, tmp_path, viewport=PHONE, is_mobile=True, has_touch=True)
    page.goto(server.base + "/")
    assert no_horizontal_scroll(page)
    shot(page, tmp_path, "phone-home")
    sign_in_admin(page, server.base, tenant.email)
    expect(page.locator("#tutor-list li")).to_have_count(1)
    assert no_horizontal_scroll(page)
    shot(page, tmp_path, "phone-admin")
    start_chat(page, server.base, tenant.tutor["id"])
    send(page, "a_very_long_word_without_any_spaces_" * 4)
    expect(last_reply(page).locator(".content")).to_contain_text("good question.")
    expect(page.locator("#metrics [data-metric=tokens]")).to_be_visible()
    assert no_horizontal_scroll(page)
    shot(page, tmp_path, "phone-chat")
    page.goto(server.base + "/admin")
    page.locator("#session-list li").first.get_by_role("button", name="Transcript").click()
    expect(page.locator("#transcript-list > li")).to_have_count(3)
    assert no_horizontal_scroll(page)
    shot(page, tmp_path, "phone-transcript")
    page.context.close()
    assert not errors, errors


def test_keyboard_only_sign_in_and_send(server: ServerProcess, page: Page, tmp_path: Path) -> None:
    tenant = make_tenant(server.base)
    page.goto(server.base + "/")
    keys = page.keyboard
    # Tab from the top of the page to the admin sign-in form's email field.
    for _ in range(20):
        keys.press("Tab")
        if page.evaluate("document.activeElement.name") == "email":
            break
    keys.type(tenant.email)
    keys.press("Tab")
    keys.type(PASSWORD)
    keys.press("Enter")
    page.wait_for_url(server.base + "/admin")

    page.goto(f"{server.base}/tutors/{tenant.tutor['id']}/chat")
    start = page.get_by_role("button", name="Start session")
    expect(start).to_be_focused()  # focus waits on the one thing to do
    keys.press("Enter")
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator("#message")).to_be_focused()
    keys.type("typed with the keyboard")
    keys.press("Tab")
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    keys.press("Enter")
    expect(last_reply(page).locator(".content")).to_have_text(
        "You said: typed with the keyboard. That is a good question."
    )
    # And Enter in the message field sends too.
    page.locator("#message").focus()
    keys.type("second")
    keys.press("Enter")
    expect(last_reply(page).locator(".content")).to_contain_text("You said: second.")
    shot(page, tmp_path, "keyboard")


# --- the admin console's other parts --------------------------------------------------------


def test_admin_edits_tutors_students_and_knowledge_bases(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    tenant = make_tenant(server.base)
    sign_in_admin(page, server.base, tenant.email)

    kb_form = page.locator("#kb-form")
    kb_form.get_by_label("Name").fill("Times tables")
    kb_form.get_by_label("Description").fill("Multiplication facts")
    kb_form.get_by_role("button", name="Create knowledge base").click()
    kb = page.locator("#kb-list > li", has_text="Times tables")
    expect(kb.get_by_role("button", name="Documents")).to_have_attribute("aria-expanded", "true")
    notes = tmp_path / "tables.md"
    notes.write_text("# Times tables\n\n7 times 8 is 56. Remember 5, 6, 7, 8: 56 = 7 x 8.\n")
    kb.get_by_label("Upload a file").set_input_files(notes)
    kb.get_by_role("button", name="Upload", exact=True).click()
    expect(kb.get_by_role("status")).to_contain_text("Uploaded tables.md")
    expect(kb.locator(".documents li")).to_contain_text("tables.md · ready, 1 chunk")
    expect(kb).to_contain_text("english · 1 document")
    bad = tmp_path / "notes.docx"
    bad.write_bytes(b"not accepted")
    kb.get_by_label("Upload a file").set_input_files(bad)
    kb.get_by_role("button", name="Upload", exact=True).click()
    expect(kb.get_by_role("alert")).to_contain_text("Could not upload the file:")
    shot(page, tmp_path, "kb")

    tutor = page.locator("#tutor-list li", has_text="Ada")
    tutor.get_by_role("button", name="Edit").click()
    form = page.locator("#tutor-form")
    expect(form.get_by_label("Name")).to_have_value("Ada")
    expect(form.get_by_label("Name")).to_be_focused()
    form.get_by_label("Subject").fill("arithmetic")
    form.get_by_label("Knowledge base").select_option(label="Times tables")
    form.get_by_label("Voice").fill("joe")
    form.get_by_role("button", name="Save changes").click()
    expect(form.get_by_role("status")).to_have_text("Saved tutor “Ada”.")
    expect(tutor).to_contain_text("arithmetic")
    expect(tutor).to_contain_text("knowledge base: Times tables")
    status, saved = api(server.base, "GET", f"/api/tutors/{tenant.tutor['id']}", tenant.token)
    assert (saved["subject"], saved["voice"], saved["model"]) == ("arithmetic", "joe", None)
    assert saved["kb_id"] is not None

    student = page.locator("#student-list li", has_text="Sam")
    student.get_by_role("button", name="Reset password").click()
    student.get_by_label("New password for Sam").fill("a-brand-new-password")
    student.get_by_role("button", name="Set password", exact=True).click()
    expect(student.get_by_role("status")).to_have_text("Password of Sam reset.")
    status, _ = api(
        server.base,
        "POST",
        "/api/students/login",
        body={"email": tenant.student["email"], "password": "a-brand-new-password"},
    )
    assert status == 200
    student.get_by_role("button", name="Delete").click()
    expect(page.locator("#students-empty")).to_be_visible()
    tutor.get_by_role("button", name="Delete").click()
    expect(page.locator("#tutors-empty")).to_be_visible()
    kb.get_by_role("button", name="Delete").first.click()  # the knowledge base's own
    expect(page.locator("#kbs-empty")).to_be_visible()
    shot(page, tmp_path, "all-deleted")


def test_admin_changes_password_and_signs_out_everywhere(
    server: ServerProcess, page: Page, tmp_path: Path
) -> None:
    tenant = make_tenant(server.base)  # tenant.token: a sign-in on another device
    sign_in_admin(page, server.base, tenant.email)
    form = page.locator("#password-form")
    form.get_by_label("Current password").fill("not my password")
    form.get_by_label("New password (8 or more characters)").fill("a-brand-new-password")
    form.get_by_role("button", name="Change password").click()
    expect(form.get_by_role("alert")).to_contain_text("Could not change the password")
    form.get_by_label("Current password").fill(PASSWORD)
    form.get_by_label("New password (8 or more characters)").fill("a-brand-new-password")
    form.get_by_role("button", name="Change password").click()
    expect(form.get_by_role("status")).to_have_text(
        "Password changed. Other devices are signed out."
    )
    status, error = api(server.base, "GET", "/api/tutors", tenant.token)
    assert (status, error["error"]) == (401, "token_revoked")
    # This tab got a new token and goes on working.
    page.reload()
    expect(page.locator("#tutor-list li", has_text="Ada")).to_be_visible()
    shot(page, tmp_path, "account")

    page.locator("#sign-out-everywhere-form").get_by_role(
        "button", name="Sign out everywhere"
    ).click()
    page.wait_for_url(server.base + "/")
    page.goto(server.base + "/admin")
    expect(page.locator("#need-admin")).to_be_visible()
    status, _ = api(
        server.base,
        "POST",
        "/api/auth/login",
        body={"email": tenant.email, "password": "a-brand-new-password"},
    )
    assert status == 200


def test_engine_test_page_still_works(server: ServerProcess, page: Page) -> None:
    key = (server.cwd / ".tutorsrv" / "engine-api-key").read_text().strip()
    page.goto(server.base + "/test")
    page.get_by_label("Engine API key").fill(key)
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#state")).to_have_text("connected")
    page.get_by_label("Message").fill("ping")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#log li.assistant").last).to_have_text(
        "You said: ping. That is a good question."
    )


# --- the voice client, against a stand-in engine --------------------------------------------


def session_frame(*, resumed: bool = False, voice: bool = False) -> dict[str, Any]:
    audio: dict[str, Any] = {"input": None, "output": None}
    if voice:
        audio = {
            "input": {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1},
            "output": {"format": "pcm_s16le", "sample_rate": 22050, "channels": 1},
        }
    return {
        "type": "session",
        "protocol": 1,
        "session_id": "0" * 32,
        "tutor": {"name": "Ada", "language": "en"},
        "audio": audio,
        "resumed": resumed,
        "expires_at": "2099-01-01T00:00:00Z",
        "history": [],
    }


def tone(ms: int, rate: int = 22050) -> bytes:
    n = rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(i / 8)) for i in range(n)))


def audio_start(response_id: str) -> str:
    return json.dumps(
        {
            "type": "audio_start",
            "response_id": response_id,
            "format": "pcm_s16le",
            "sample_rate": 22050,
            "channels": 1,
        }
    )


def test_voice_client_plays_speech_and_streams_the_microphone(
    server: ServerProcess, playwright: Playwright, tmp_path: Path
) -> None:
    """The chat page's voice side, to the protocol, against a stand-in engine socket: gapless
    playback and `played`, stop on speech_started and interrupted, transcriptions, the
    microphone in both modes (Chromium's fake device: a beeping tone)."""
    tenant: Tenant = make_tenant(server.base)
    texts: list[dict[str, Any]] = []
    frames: list[bytes] = []
    sockets: list[WebSocketRoute] = []

    def engine(ws: WebSocketRoute) -> None:
        sockets.append(ws)

        def receive(message: str | bytes) -> None:
            if isinstance(message, bytes):
                frames.append(message)
                return
            texts.append(json.loads(message))

        ws.on_message(receive)
        ws.send(json.dumps(session_frame(voice=True)))

    def sent(kind: str) -> list[dict[str, Any]]:
        return [m for m in texts if m["type"] == kind]

    def until(check: Any, what: str, wait: float = 10.0) -> None:
        deadline = time.monotonic() + wait
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {texts[-5:]}"
            page.wait_for_timeout(50)

    browser = launch(
        playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"
    )
    try:
        page, errors = open_page(browser, tmp_path)
        page.route_web_socket("**/ws/ws/**", engine)
        sign_in_admin(page, server.base, tenant.email)
        start_chat(page, server.base, tenant.tutor["id"])
        ws = sockets[0]
        expect(page.locator("#mic")).to_be_enabled()
        expect(page.locator("#voice-note")).to_have_text("Microphone: sent as pcm_s16le, 16 kHz.")
        until(lambda: sent("config"), "config")
        assert sent("config") == [{"type": "config", "audio_output": True}]

        # A spoken reply: 1 s of audio in ten frames, all heard.
        send(page, "hi")
        until(lambda: sent("text"), "the text turn")
        ws.send(json.dumps({"type": "text_stream", "token": "Hello", "response_id": "r_1"}))
        ws.send(audio_start("r_1"))
        for _ in range(10):
            ws.send(tone(100))
        ws.send(json.dumps({"type": "audio_end", "response_id": "r_1", "audio_ms": 1000}))
        ws.send(json.dumps({"type": "text", "content": "Hello", "response_id": "r_1"}))
        metrics = {"ttft_ms": 80.0, "first_audio_ms": 240.0, "tokens": 1}
        ws.send(json.dumps({"type": "response_done", "response_id": "r_1", "metrics": metrics}))
        expect(page.locator("#metrics [data-metric=first_audio_ms]")).to_have_text("240 ms")
        until(lambda: sent("played"), "played", wait=5)
        played = sent("played")[0]
        assert played["response_id"] == "r_1" and 990 <= played["audio_ms"] <= 1010, played
        expect(page.locator("#audio-state")).to_have_text("Played 1.0 s of the tutor's speech.")

        # Barge-in: the student starts talking 0.4 s into a 3 s reply.
        ws.send(audio_start("r_2"))
        for _ in range(30):
            ws.send(tone(100))
        expect(page.locator("#audio-state")).to_have_text("The tutor is speaking…")
        page.wait_for_timeout(400)
        ws.send(json.dumps({"type": "speech_started"}))
        until(lambda: len(sent("played")) == 2, "played after speech_started")
        cut = sent("played")[1]
        assert cut["response_id"] == "r_2" and 200 <= cut["audio_ms"] <= 2000, cut
        expect(page.locator("#audio-state")).to_contain_text("you started speaking")
        ws.send(tone(100))  # late frames of the stopped reply are not played
        ws.send(json.dumps({"type": "audio_end", "response_id": "r_2", "audio_ms": 3100}))

        # The student's words, as the engine hears them.
        ws.send(json.dumps({"type": "transcription", "content": "what is", "final": False}))
        heard = page.locator("#log li.msg.user").last
        expect(heard).to_have_class(re.compile(r"\bpartial\b"))
        expect(heard.locator(".content")).to_have_text("what is")
        ws.send(json.dumps({"type": "transcription", "content": "What is 7 x 8?", "final": True}))
        expect(heard.locator(".content")).to_have_text("What is 7 x 8?")
        expect(heard).not_to_have_class(re.compile(r"\bpartial\b"))

        # interrupted: queued audio of that reply is dropped at once.
        ws.send(json.dumps({"type": "text_stream", "token": "Seven", "response_id": "r_3"}))
        ws.send(audio_start("r_3"))
        for _ in range(20):
            ws.send(tone(100))
        ws.send(json.dumps({"type": "interrupted", "response_id": "r_3", "reason": "interrupt"}))
        until(lambda: len(sent("played")) == 3, "played after interrupted")
        dropped = sent("played")[2]
        assert dropped["response_id"] == "r_3" and dropped["audio_ms"] < 1000, dropped
        expect(page.locator("#log li.msg.assistant").last.locator(".badge")).to_have_text(
            "interrupted"
        )
        shot(page, tmp_path, "voice-playback")

        # Speak replies off: the engine is told.
        page.get_by_label("Speak replies").uncheck()
        until(lambda: len(sent("config")) == 2, "config off")
        assert sent("config")[1] == {"type": "config", "audio_output": False}

        # Hands-free microphone: 40 ms frames of 16 kHz PCM s16le, with sound in them.
        page.get_by_role("button", name="Start microphone").click()
        expect(page.locator("#mic")).to_have_attribute("aria-pressed", "true")
        until(lambda: len(frames) >= 20, "microphone frames")
        page.get_by_role("button", name="Stop microphone").click()
        expect(page.locator("#mic")).to_have_attribute("aria-pressed", "false")
        assert {len(f) for f in frames} == {1280}, {len(f) for f in frames}
        loudest = max(max(abs(s) for s in struct.unpack(f"<{len(f) // 2}h", f)) for f in frames)
        assert loudest > 1000, loudest
        page.wait_for_timeout(200)
        count = len(frames)
        page.wait_for_timeout(300)
        assert len(frames) == count  # stopped means stopped
        assert not sent("audio_end")  # hands-free leaves the turn's end to the engine's VAD

        # Push-to-talk on the space bar: frames while held, then audio_end.
        page.get_by_label("Push-to-talk").check()
        expect(page.locator("#mic")).to_have_text("Hold to talk")
        page.locator("#mic").focus()
        before = len(frames)
        page.keyboard.down("Space")
        expect(page.locator("#mic-state")).to_have_text("Talking… release to send.")
        page.wait_for_timeout(600)
        page.keyboard.up("Space")
        until(lambda: sent("audio_end"), "audio_end")
        talk = frames[before:]
        assert len(talk) >= 5, len(talk)
        assert all(len(f) % 2 == 0 and 0 < len(f) <= 1280 for f in talk)
        assert texts[-1] == {"type": "audio_end"}
        shot(page, tmp_path, "voice-microphone")
    finally:
        browser.close()
    assert not errors, errors


# --- the real model -------------------------------------------------------------------------


@pytest.mark.real_model
def test_chat_with_the_real_default_model(
    postgres_url: str, page: Page, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # The real default model (not the tests' fast one): what a new user's `make run` serves.
    env = {"TUTORSRV_LLM_SEED": "7", "TUTORSRV_LLM_MAX_TOKENS": "96", "TUTORSRV_LLM_MODEL": ""}
    with running_server(postgres_url, tmp_path_factory.mktemp("pages-real"), env) as real:
        # The default persona (an empty system prompt), as a new user's first tutor has.
        tenant = make_tenant(real.base, system_prompt="", greeting="")
        sign_in_student(page, real.base, tenant.student["email"])
        page.get_by_role("link", name="Chat with Ada").click()
        page.get_by_role("button", name="Start session").click()
        expect(page.locator("#conn-state")).to_have_text("connected")
        # A question whose answer takes a few seconds to stream, so the page shows it forming.
        send(page, "What is 7 times 8? Please explain why.")
        seen = watch_stream(page)
        expect(page.locator("#metrics [data-metric=tokens]")).to_be_visible(timeout=120_000)
        reply = last_reply(page).locator(".content").inner_text()
        # The default model is chosen to be right (bench/tutor_quality.py), and a new user
        # asking in the chat page hears the right answer.
        assert "56" in reply, reply
        assert len(seen) >= 2, seen
        shot(page, tmp_path, "real-model")
