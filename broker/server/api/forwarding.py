"""The client's address: the TCP peer's, or, behind a trusted proxy, the one the proxy
wrote into ``X-Forwarded-For`` (Vault's listener options ``x_forwarded_for_*``).

Everything keyed on the client's address (token ``bound_cidrs``, AppRole
``secret_id_bound_cidrs`` and ``token_bound_cidrs``, the per-address rate limit, the audit
entry's ``remote_address``) must see the real client. Behind a proxy the peer is the proxy,
so every client shares its binding and its rate limit; honouring the header from anyone
would let any client claim any address and walk through a CIDR binding. So the header is
read only when the peer is in ``x_forwarded_for_authorized_addrs``, and only the hop that
proxy appended (the right-most, less ``x_forwarded_for_hop_skips``): the hops to its left
came from the client and prove nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientAddresses:
    """Vault's three options, parsed once (``Settings`` has checked the CIDR blocks)."""

    proxies: tuple[Network, ...] = ()
    hop_skips: int = 0
    reject_not_authorized: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientAddresses:
        return cls(
            tuple(
                ipaddress.ip_network(c, strict=False)
                for c in settings.x_forwarded_for_authorized_addrs
            ),
            max(0, settings.x_forwarded_for_hop_skips),
            settings.x_forwarded_for_reject_not_authorized,
        )

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    def of(self, request: web.Request) -> str:
        """The address the request is from; a 400 for a forwarded address that must not be
        believed (Vault's ``x_forwarded_for_reject_not_authorized``) or cannot be read."""
        peer = request.remote or ""
        if not self.proxies:
            return peer  # Vault: without authorised addresses the header is not processed
        lines = request.headers.getall("X-Forwarded-For", [])
        if not lines:
            return peer
        if not self._trusted(peer):
            if self.reject_not_authorized:
                raise InvalidRequest(
                    "client address not authorized for X-Forwarded-For and configured to "
                    "reject connection"
                )
            return peer
        hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
        index = len(hops) - 1 - self.hop_skips
        if index < 0:
            raise InvalidRequest(
                "malformed x-forwarded-for configuration or request, hops to skip would skip "
                "before earliest chain link"
            )
        try:
            return str(ipaddress.ip_address(hops[index]))
        except ValueError:
            raise InvalidRequest("malformed X-Forwarded-For: not an IP address") from None


CLIENT_ADDRESSES = web.AppKey("broker.client_addresses", ClientAddresses)


def client_address(request: web.Request) -> str:
    """The request's client address under the application's forwarding settings."""
    addresses = request.app.get(CLIENT_ADDRESSES)
    return addresses.of(request) if addresses is not None else request.remote or ""
