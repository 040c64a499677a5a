"""GET /metrics: Prometheus text, one registry per app, counts that move by exactly what
happened, route labels by pattern, and no secret or id anywhere in the body."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tutorsrv.appkeys import ENGINE_API_KEY
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import (
    API_KEY,
    AUTH,
    JWT_SECRET,
    MakeClient,
    eventually,
    new_session,
    receive_json,
    receive_until,
    ws_path,
)

# Slow enough to interrupt, quick enough to finish: 60 tokens, 10 ms apart.
PACED = {"scripted_token_count": 60, "scripted_token_delay_ms": 10.0}


class Scrape:
    """One /metrics body, parsed: sample values by name and labels."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.families: set[str] = set()
        for family in text_string_to_metric_families(body):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def routes(self) -> set[str]:
        return {
            dict(labels)["route"]
            for name, labels in self.samples
            if name == "tutorsrv_http_requests_total"
        }


async def scrape(client: TestClient) -> Scrape:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return Scrape(await resp.text())


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def requests(route: str, status: int, method: str = "GET") -> dict[str, str]:
    return {"method": method, "route": route, "status": str(status)}


async def test_engine_metrics_move_by_exactly_what_happened(make_client: MakeClient) -> None:
    client = await make_client(llm=PACED, engine={"max_sessions": 1})
    before = await scrape(client)
    assert before.get("tutorsrv_sessions_live") == 0
    assert before.get("tutorsrv_responses_total", outcome="done") == 0
    # No backplane on a lone engine: no backplane metrics. Speech is off: no voice metrics.
    assert not {f for f in before.families if "backplane" in f or "audio" in f or "asr" in f}

    session = await new_session(client)
    sid, token = session["session_id"], session["engine_token"]
    refused = await client.post(
        "/v1/sessions", json={"tutor_id": "t1", "student_id": "s2"}, headers=AUTH
    )
    assert refused.status == 503

    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    live = await scrape(client)
    assert live.get("tutorsrv_sessions_live") == 1
    assert live.get("tutorsrv_sockets_live") == 1

    # A whole reply.
    await ws.send_json({"type": "text", "content": "What is a fraction?"})
    done = (await receive_until(ws, "response_done"))[-1]
    done_tokens = done["metrics"]["tokens"]
    assert done_tokens == PACED["scripted_token_count"]

    # An interrupted one: the tokens counted are the ones streamed before `interrupted`.
    await ws.send_json({"type": "text", "content": "Tell me everything"})
    for _ in range(3):
        assert (await receive_json(ws))["type"] == "text_stream"
    await ws.send_json({"type": "interrupt"})
    seen = await receive_until(ws, "interrupted")
    streamed = 3 + sum(1 for m in seen if m["type"] == "text_stream")
    assert 3 <= streamed < PACED["scripted_token_count"]

    # Bad messages: each answered with one error frame, counted by its code.
    await ws.send_str("{not json")
    assert (await receive_json(ws))["code"] == "invalid_json"
    await ws.send_json({"type": "shout"})
    assert (await receive_json(ws))["code"] == "unknown_type"
    await ws.send_json({"type": "text", "content": ""})
    assert (await receive_json(ws))["code"] == "invalid_field"

    resp = await client.get(f"/v1/sessions/{sid}", headers=AUTH)
    assert resp.status == 200
    resp = await client.get(f"/no/such/page/{sid}")
    assert resp.status == 404
    await ws.close()

    async def socket_gone() -> bool:
        return (await scrape(client)).get("tutorsrv_sockets_live") == 0

    await eventually(socket_gone, "the socket to be released")
    after = await scrape(client)

    assert after.get("tutorsrv_sessions_live") == 1
    assert delta(before, after, "tutorsrv_sessions_created_total") == 1
    assert delta(before, after, "tutorsrv_sessions_rejected_total", reason="at_capacity") == 1
    assert delta(before, after, "tutorsrv_sessions_rejected_total", reason="shutting_down") == 0

    assert delta(before, after, "tutorsrv_responses_total", outcome="done") == 1
    assert delta(before, after, "tutorsrv_responses_total", outcome="interrupted") == 1
    assert delta(before, after, "tutorsrv_responses_total", outcome="error") == 0
    assert delta(before, after, "tutorsrv_tokens_generated_total") == done_tokens + streamed
    # Both replies reached a first token; only the whole one has an end-to-end duration.
    assert delta(before, after, "tutorsrv_first_token_seconds_count") == 2
    assert delta(before, after, "tutorsrv_response_seconds_count") == 1
    assert after.get("tutorsrv_response_seconds_sum") >= done["metrics"]["duration_ms"] / 1000
    assert after.get("tutorsrv_response_seconds_bucket", le="+Inf") == 1

    for code in ("invalid_json", "unknown_type", "invalid_field"):
        assert delta(before, after, "tutorsrv_ws_error_frames_total", code=code) == 1
    frames = "tutorsrv_ws_error_frames_total"
    assert sum(v for (name, _), v in after.samples.items() if name == frames) == 3

    http = "tutorsrv_http_requests_total"
    assert delta(before, after, http, **requests("/v1/sessions", 201, "POST")) == 1
    assert delta(before, after, http, **requests("/v1/sessions", 503, "POST")) == 1
    assert delta(before, after, http, **requests("/v1/sessions/{session_id}", 200)) == 1
    assert delta(before, after, http, **requests("/ws/ws/{session_id}", 101)) == 1
    assert delta(before, after, http, **requests("unmatched", 404)) == 1
    assert after.get(http, **requests("/metrics", 200)) >= 3
    # Routes are patterns: the ids of sessions never become labels.
    assert all(sid not in route for route in after.routes())

    # Nothing secret, and no id, anywhere in the body.
    for secret in (API_KEY, token, sid):
        assert secret not in after.body

    # Ending the session empties the gauge.
    resp = await client.delete(f"/v1/sessions/{sid}", headers=AUTH)
    assert resp.status == 204
    assert (await scrape(client)).get("tutorsrv_sessions_live") == 0


async def test_each_app_has_its_own_registry(make_client: MakeClient) -> None:
    one = await make_client()
    two = await make_client()
    await new_session(one)
    assert (await scrape(one)).get("tutorsrv_sessions_created_total") == 1
    assert (await scrape(two)).get("tutorsrv_sessions_created_total") == 0
    route = requests("/v1/sessions", 201, "POST")
    assert (await scrape(two)).get("tutorsrv_http_requests_total", **route) == 0


async def test_all_role_metrics_include_the_backplane(make_client: MakeClient) -> None:
    client = await make_client("all")
    session = await new_session(client)
    sid, token = session["session_id"], session["engine_token"]

    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.send_json({"type": "text", "content": "Hello"})
    done = (await receive_until(ws, "response_done"))[-1]
    await ws.close()

    async def delivered() -> bool:
        return (await scrape(client)).get("tutorsrv_backplane_pending") == 0

    await eventually(delivered, "the turn to be delivered")

    # A web route with an id in its path, refused before any handler runs: still a pattern.
    resp = await client.get(f"/api/sessions/{sid}")
    assert resp.status == 401
    resp = await client.post("/api/auth/login", json={"email": "a@b.example", "password": "x"})
    login_status = resp.status

    after = await scrape(client)
    assert after.get("tutorsrv_sessions_created_total") == 1
    assert after.get("tutorsrv_responses_total", outcome="done") == 1
    assert after.get("tutorsrv_tokens_generated_total") == done["metrics"]["tokens"]
    assert after.get("tutorsrv_first_token_seconds_count") == 1
    for name in ("retries", "dropped", "rejected"):
        assert after.get(f"tutorsrv_backplane_{name}_total") == 0
    http = "tutorsrv_http_requests_total"
    assert after.get(http, **requests("/api/sessions/{session_id}", 401)) == 1
    assert after.get(http, **requests("/api/auth/login", login_status, "POST")) == 1
    assert all(sid not in route for route in after.routes())
    for secret in (API_KEY, JWT_SECRET, token, sid, client.server.app[ENGINE_API_KEY]):
        assert secret not in after.body
