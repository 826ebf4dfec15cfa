"""Where a webhook may go: http(s) URLs whose host resolves to public addresses only.

Loopback, private, link-local, reserved and multicast addresses, and the server's own, are
refused unless `TUNELAB_WEBHOOKS_ALLOW_PRIVATE` allows them: a webhook must not become a way to
reach the services beside tunelab (server-side request forgery). The check is made when an
endpoint is saved and again before every delivery, which connects to the address it checked
(DNS can change between the two, or between a check and a connect)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from app.config import get_settings
from app.core.errors import InvalidField

MAX_URL_CHARS = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(ValueError):
    """The URL may not be called; the message says why (fit to show its owner). `transient`:
    the host could not be resolved now, and may be later."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to for it."""

    url: str
    scheme: str
    host: str  # as the URL names it: the Host header and the TLS server name
    port: int
    address: IPAddress


def check_syntax(url: str) -> str:
    """An http(s) URL with a host and no credentials in it, or InvalidField on `url`."""
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidField(("url",), f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidField(("url",), "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidField(("url",), "only http:// and https:// URLs can receive webhooks")
    if not parts.hostname:
        raise InvalidField(("url",), "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidField(("url",), "put no user name or password in the URL: check the signature instead")
    return url


def resolve(url: str) -> Target:
    """The address a delivery to `url` connects to, or RefusedAddress."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as error:  # ValueError: a NUL in the name
        raise RefusedAddress(f"the host {host!r} cannot be resolved ({error})", transient=True) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise RefusedAddress(f"the host {host!r} has no address")
    if not get_settings().webhooks_allow_private:
        for address in addresses:
            if reason := _refusal(address):
                raise RefusedAddress(
                    f"{host} resolves to {address}, {reason}: webhooks only go to public addresses "
                    "(an administrator can allow others with TUNELAB_WEBHOOKS_ALLOW_PRIVATE)"
                )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])


def check_url(url: str) -> str:
    """The URL as it is saved: its syntax checked, and where it goes (InvalidField on `url`)."""
    url = check_syntax(url)
    try:
        resolve(url)
    except RefusedAddress as error:
        raise InvalidField(("url",), str(error)) from None
    return url


def _refusal(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _own_addresses():
        return "this server's own address"
    if not address.is_global:
        return "a private or reserved address"
    return None


@lru_cache(maxsize=1)
def _own_addresses() -> frozenset[IPAddress]:
    """The addresses this host's name resolves to (its public address, often)."""
    found: set[IPAddress] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        found.update(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos)
    return frozenset(found)
