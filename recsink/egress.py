"""Where pulls may reach: the ``fetch.allow`` policy (standard library only, so that
``recsink.config`` can check entries without importing aiohttp).

A callback names the location recsink downloads, so anyone holding a signing key (or anyone
at all with ``verify_signatures = false``) chooses where recsink connects. The policy:

* **HTTP(S), ``fetch.allow`` empty:** any host whose addresses are public (``is_global``:
  not loopback, private, link-local, unspecified, multicast, reserved, CGNAT 100.64.0.0/10,
  documentation, …; an IPv4-mapped or NAT64 IPv6 address is judged by its IPv4 address).
* **HTTP(S), ``fetch.allow`` set:** only what it lists: a host name (``media.example.com``,
  or ``*.example.com`` for any name below it), optionally with a port
  (``media.example.com:8443``), or an IP network (``10.0.0.0/8``, ``127.0.0.1/32``, a bare
  address, ``[::1]:8080``). A listed name still needs public addresses; a private address is
  only ever reached when a listed network (or address) covers it.
* **Buckets:** ``s3://`` and ``gs://`` locations covered by ``[[fetch.buckets]]``, or whose
  bucket is listed (``s3://bucket``, read with the AWS chain, i.e. recsink's own
  credentials); ``azure://`` locations of an account with ``[[fetch.azure]]`` credentials,
  limited to the listed containers (``azure://account/container``) when any are listed for
  that account. Nothing else: the server's own credentials never read a bucket the operator
  did not name.

Addresses are checked after DNS resolution, on the addresses then connected to (the
resolver in :mod:`recsink.fetch` drops the others), and again on every redirect.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: NAT64's well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,254}")
_AZURE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_AZURE_CONTAINER = re.compile(r"\$?[a-z0-9][a-z0-9-]{1,62}")
_FORMS = ("a host name (media.example.com, *.example.com), host:port, an IP network "
          "(10.0.0.0/8) or address, s3://bucket, gs://bucket or azure://account/container")


class Refused(OSError):
    """A pull's destination is not allowed; ``str()`` says why, naming the host (never the
    whole location, whose path or query may hold a secret). An :class:`OSError` so that
    aiohttp's connector passes it on from a resolver as its ``ClientConnectorError``'s
    ``os_error``."""


@dataclass(frozen=True)
class HostRule:
    """A host name entry; ``wildcard``: any name below ``name`` (``*.name``)."""

    name: str
    port: int | None
    wildcard: bool

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        return host.endswith("." + self.name) if self.wildcard else host == self.name


@dataclass(frozen=True)
class NetworkRule:
    """An IP network (or one address) entry."""

    network: Network
    port: int | None

    def covers(self, address: Address, port: int) -> bool:
        return (self.port is None or port == self.port) and address in self.network


@dataclass(frozen=True)
class StoreRule:
    """A bucket entry: ``scheme`` ``s3``/``gs`` and a bucket, or ``azure`` and
    ``account/container``."""

    scheme: str
    name: str


Rule = HostRule | NetworkRule | StoreRule


def parse_rule(entry: str) -> Rule:
    """One ``fetch.allow`` entry. Raises :class:`ValueError` naming the entry and the forms
    accepted."""
    text = entry.strip().lower()
    if "://" in text:
        return _store_rule(entry, text)
    host, port = text, None
    if text.startswith("["):  # [v6 address or network] with an optional :port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r}: write an IPv6 address as [address] or [address]:port")
        port = _port(entry, rest[1:]) if rest else None
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(entry, number)
    try:
        return NetworkRule(ipaddress.ip_network(host, strict=True), port)
    except ValueError as exc:
        if looks_like_ip(host) or "/" in host:
            raise ValueError(f"{entry!r}: not an IP network or address ({exc})") from None
    name = host.rstrip(".")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{entry!r}: not {_FORMS}")
    wildcard = name.startswith("*.")
    return HostRule(name.removeprefix("*."), port, wildcard)


def _store_rule(entry: str, text: str) -> StoreRule:
    scheme, _, rest = text.partition("://")
    rest = rest.rstrip("/")
    if scheme in ("s3", "gs"):
        if not _BUCKET.fullmatch(rest):
            raise ValueError(f"{entry!r}: must be {scheme}://bucket (a bucket name alone)")
        return StoreRule(scheme, rest)
    if scheme == "azure":
        account, _, container = rest.partition("/")
        if not (_AZURE_ACCOUNT.fullmatch(account) and _AZURE_CONTAINER.fullmatch(container)):
            raise ValueError(f"{entry!r}: must be azure://account/container")
        return StoreRule(scheme, rest)
    raise ValueError(f"{entry!r}: unknown scheme {scheme!r}; entries are {_FORMS}")


def _port(entry: str, number: str) -> int:
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return int(number)


def looks_like_ip(host: str) -> bool:
    """True when ``host`` is meant as an IP address rather than a name: it holds a colon
    or only digits and dots (aiohttp's own test, ``helpers.is_ip_address``, under which it
    connects without asking the resolver)."""
    return ":" in host or host.replace(".", "").isdigit()


def is_public(address: Address) -> bool:
    """True for a globally reachable unicast address (see the module docstring)."""
    address = _unwrap(address)
    embedded = address.sixtofour if isinstance(address, ipaddress.IPv6Address) else None
    if embedded is not None and not is_public(embedded):  # 6to4 (2002::/16)
        return False
    return address.is_global and not address.is_multicast


def _unwrap(address: Address) -> Address:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address stands for, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


class Egress:
    """The ``fetch.allow`` policy for one server. ``entries`` must have passed
    :func:`parse_rule` (config validation does that)."""

    def __init__(self, entries: Iterable[str]) -> None:
        rules = [parse_rule(entry) for entry in entries]
        #: Only what ``fetch.allow`` lists may be reached (it is not empty).
        self.restricted = bool(rules)
        self._hosts = [r for r in rules if isinstance(r, HostRule)]
        self._networks = [r for r in rules if isinstance(r, NetworkRule)]
        self._stores = {(r.scheme, r.name) for r in rules if isinstance(r, StoreRule)}

    def check_host(self, host: str, port: int) -> None:
        """Before connecting to ``host:port`` (a location's or a redirect's): raise
        :class:`Refused` when the host is an address that is not allowed, or a name no
        entry could allow. A name's addresses are checked by :meth:`check_address` once
        resolved."""
        host = host.lower().rstrip(".")
        if looks_like_ip(host):
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise Refused(f"{host} is not a canonical IP address") from None
            self.check_address(host, port, address)
        elif self.restricted and not self._networks and not self._named(host, port):
            raise Refused(f"{host}:{port} is not in fetch.allow")

    def check_address(self, host: str, port: int, address: Address) -> None:
        """Raise :class:`Refused` unless recsink may connect to ``address`` (what ``host``
        resolved to, or ``host`` itself) on ``port``."""
        host = host.lower().rstrip(".")
        unwrapped = _unwrap(address)
        if any(rule.covers(unwrapped, port) for rule in self._networks):
            return
        if not is_public(unwrapped):
            what = host if host == str(address) else f"{host} resolves to {address}, which"
            raise Refused(f"{what} is not a public address and not in fetch.allow")
        if self.restricted and not self._named(host, port):
            raise Refused(f"{host}:{port} is not in fetch.allow")

    def _named(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self._hosts)

    def allows_bucket(self, scheme: str, bucket: str) -> bool:
        """True when ``fetch.allow`` lists ``<scheme>://<bucket>`` (``s3``, ``gs``)."""
        return (scheme, bucket.lower()) in self._stores

    def allows_container(self, account: str, container: str) -> bool:
        """True unless ``fetch.allow`` lists containers of ``account`` and not this one."""
        listed = {name for scheme, name in self._stores
                  if scheme == "azure" and name.startswith(account.lower() + "/")}
        return not listed or f"{account}/{container}".lower() in listed
