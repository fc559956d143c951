"""Who may upload: client networks, then credentials (``[auth]``).

Kazoo cannot send custom headers (specs/kazoo.md §3.3); it authenticates with what its URL
holds: ``http://user:pass@host/…`` becomes HTTP Basic, or a secret token sits in the path
(``/kazoo/<token>/…``) or the query (``?token=…``). A bearer token is accepted too, for other
senders. Every comparison is constant-time, and every configured credential is compared on
every request, so timing tells nothing about which one nearly matched.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections.abc import Mapping, Sequence

from recsink.config import AuthSettings
from recsink.errors import Forbidden, Unauthorized


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def matches_any(given: str, expected: Sequence[str]) -> bool:
    found = False
    for candidate in expected:
        found |= _equal(given, candidate)
    return found


def parse_authorization(authorization: str | None) -> tuple[str, str]:
    """An ``Authorization`` header as (lower-case scheme, value); ("", "") when absent."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return scheme.lower(), value.strip()


def bearer_matches(authorization: str | None, tokens: Sequence[str]) -> bool:
    """True when ``authorization`` is ``Bearer <one of tokens>`` (constant-time)."""
    scheme, value = parse_authorization(authorization)
    return scheme == "bearer" and matches_any(value, tokens)


class UploadAuth:
    """Checks one request against ``[auth]``."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._networks = list(settings.allow_networks)
        self._basic = [(c.username, c.password.get_secret_value()) for c in settings.basic]
        self._bearer = [t.get_secret_value() for t in settings.bearer_tokens]
        self._url_tokens = [t.get_secret_value() for t in settings.url_tokens]

    def check(
        self,
        remote: str | None,
        authorization: str | None,
        segments: list[str],
        query: Mapping[str, str],
    ) -> list[str]:
        """Admit or refuse a request; return ``segments`` without a leading URL token.

        ``remote``: the peer address; ``authorization``: the Authorization header;
        ``segments``: decoded path segments after the route prefix; ``query``: decoded query.
        Raises 403 ``address_not_allowed`` outside ``allow_networks``, 401
        ``unauthorized`` when credentials are configured and none of them matched.
        """
        self.check_network(remote)
        if not self.settings.has_credentials:
            return segments
        if self._url_tokens and segments and matches_any(segments[0], self._url_tokens):
            return segments[1:]
        if self.check_credentials(authorization, query):
            return segments
        raise self.refusal()

    def check_network(self, remote: str | None) -> None:
        """Raise 403 unless ``remote`` is inside an allowed network (or none are set)."""
        if not self._networks:
            return
        try:
            address = ipaddress.ip_address((remote or "").split("%")[0])
        except ValueError:
            address = None
        if address is None or not any(address in net for net in self._networks):
            raise Forbidden("address_not_allowed",
                               f"client address {remote} is not in auth.allow_networks")

    def check_credentials(self, authorization: str | None, query: Mapping[str, str]) -> bool:
        """True when the Authorization header or the query token matches a credential."""
        scheme, value = parse_authorization(authorization)
        if scheme == "basic" and self._basic:
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except ValueError:  # not base64 (binascii.Error; non-ASCII text), or not UTF-8
                return False
            ok = False
            for name, secret in self._basic:
                ok |= _equal(user, name) & _equal(password, secret) & bool(sep)
            return ok
        if scheme == "bearer" and self._bearer:
            return matches_any(value, self._bearer)
        token = query.get(self.settings.query_token_param)
        return bool(self._url_tokens) and token is not None and matches_any(token, self._url_tokens)

    def refusal(self) -> Unauthorized:
        return Unauthorized("unauthorized", "missing or wrong credentials",
                            challenge='Basic realm="recsink"' if self._basic else None)
