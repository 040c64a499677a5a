"""Forwarded headers (X-Forwarded-For/-Proto/-Host) count only from server.trusted_proxies."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.forwarded import client_address, parse_networks

from .conftest import MakeClient
from .web_helpers import PASSWORD, register_admin

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # No proxy in between: the peer is the client, whatever it claims.
        ("198.51.100.7", "203.0.113.9", "198.51.100.7"),
        # nginx on the same machine: it appended the address it saw.
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        # A client that sends its own X-Forwarded-For through the proxy: what it wrote is
        # left of the proxy's entry, and not believed.
        ("127.0.0.1", "203.0.113.9, 198.51.100.7", "198.51.100.7"),
        # Two trusted hops (a load balancer, then nginx): skipped from the right.
        ("127.0.0.1", "203.0.113.9, 198.51.100.7, 10.0.0.4", "198.51.100.7"),
        # A trusted proxy that sent no header is itself the client.
        ("127.0.0.1", "", "127.0.0.1"),
        # Every hop trusted: the leftmost one.
        ("::1", "10.0.0.9, 10.0.0.4", "10.0.0.9"),
        ("127.0.0.1", " , garbage", "garbage"),
    ],
)
def test_client_address(peer: str, forwarded_for: str, client: str) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


def test_bad_entries_are_named() -> None:
    with pytest.raises(ValueError, match=r"'proxy\.local' is not an IP address"):
        parse_networks(["10.0.0.1", "proxy.local"])


async def wrong_logins(client: TestClient, forwarded_for: list[str]) -> list[int]:
    """A failed admin login per X-Forwarded-For value; their statuses."""
    statuses = []
    for n, value in enumerate(forwarded_for):
        resp = await client.post(
            "/api/auth/login",
            json={"email": f"nobody{n}@school.example", "password": "wrong password"},
            headers={"X-Forwarded-For": value},
        )
        statuses.append(resp.status)
    return statuses


async def test_spoofed_forwarded_for_does_not_dodge_the_address_limit(
    make_client: MakeClient,
) -> None:
    """Rotating X-Forwarded-For once walked past the per-address login limit."""
    client = await make_client("all", server={"login_rate_per_ip_per_minute": 3})
    invented = [f"203.0.113.{n}" for n in range(4)]
    assert await wrong_logins(client, invented) == [401, 401, 401, 429]


async def test_behind_a_trusted_proxy_the_forged_part_is_ignored(
    make_client: MakeClient,
) -> None:
    client = await make_client(
        "all", server={"login_rate_per_ip_per_minute": 3, "trusted_proxies": ["127.0.0.1"]}
    )
    # The client forges a new address each time; the proxy appends the real one.
    forged = [f"203.0.113.{n}, 198.51.100.7" for n in range(4)]
    assert await wrong_logins(client, forged) == [401, 401, 401, 429]
    # Another real client behind the same proxy has its own budget.
    admin = await register_admin(client)
    resp = await client.post(
        "/api/auth/login",
        json={"email": admin["email"], "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.8"},
    )
    assert resp.status == 200
