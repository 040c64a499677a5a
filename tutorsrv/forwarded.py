"""Who the client is, behind a proxy: forwarded headers believed only from trusted proxies.

A TLS proxy (nginx, Caddy, a load balancer) connects to tutorsrv itself and says in
``X-Forwarded-For`` / ``-Proto`` / ``-Host`` whom it is relaying. Anyone else can send the same
headers, so they count only when the connection comes from an address in
``server.trusted_proxies``. Believing them from anyone let a client walk past the per-address
login limit by rotating ``X-Forwarded-For``, and choose the host of the ``engine_url`` it is
handed.

The middleware rewrites the request once (``Request.clone``), so everything after it reads
``request.remote``, ``request.scheme`` and ``request.host`` and never a header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from .http_errors import Handler

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges ("10.0.0.5", "10.0.0.0/8", "::1"); ValueError naming a bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def _is_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: str, trusted: tuple[Network, ...]) -> str:
    """The client's address. ``X-Forwarded-For`` is "client, proxy1, proxy2": each proxy adds
    the address it was connected from. Read from the right, past every trusted proxy; the
    first address that is not one is the client (what was written left of it may be forged).
    """
    if not trusted or not _is_in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    address = peer
    while hops and _is_in(address, trusted):
        address = hops.pop()
    return address


def _first(value: str | None) -> str:
    # Proxies chain values: "client-facing, next-hop"; the first is what the browser used.
    return value.split(",")[0].strip() if value else ""


def middleware(trusted: tuple[Network, ...]) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def forwarded_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        if not trusted or not _is_in(peer, trusted):
            return await handler(request)
        headers = request.headers
        changes: dict[str, str] = {
            "remote": client_address(peer, headers.get("X-Forwarded-For", ""), trusted)
        }
        if scheme := _first(headers.get("X-Forwarded-Proto")).lower():
            changes["scheme"] = scheme
        if host := _first(headers.get("X-Forwarded-Host")):
            changes["host"] = host
        return await handler(request.clone(**changes))

    return forwarded_headers
