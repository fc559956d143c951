"""Who may upload: client networks, then credentials (``[auth]``).

Kazoo cannot send custom headers (specs/kazoo.md §3.3); it authenticates with what its URL
holds: ``http://user:pass@host/…`` becomes HTTP Basic, or a secret token sits in the path
(``/kazoo/<token>/…``) or the query (``?token=…``). A bearer token is accepted too, for other
senders. Every comparison is constant-time, and every configured credential is compared on
every request, so timing tells nothing about which one nearly matched.

A credential may be bound to Kazoo accounts (``accounts = [...]`` on an ``auth.basic`` entry,
or a ``{ token, accounts }`` table among ``auth.url_tokens`` / ``auth.bearer_tokens``): the
request is then admitted with those accounts (:class:`Admission`), and the Kazoo routes
refuse (403 ``account_not_allowed``) recordings of any other account.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from recsink.config import ApiToken, AuthSettings, BoundToken, Scope
from recsink.errors import Forbidden, Unauthorized


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def matches_any(given: str, expected: Sequence[str]) -> bool:
    found = False
    for candidate in expected:
        found |= _equal(given, candidate)
    return found


def _match(given: str, tokens: Sequence[tuple[str, frozenset[str] | None]]
           ) -> tuple[bool, frozenset[str] | None]:
    """Whether ``given`` is one of ``tokens`` (constant-time, all compared), and the
    accounts the matching one is bound to."""
    found, accounts = False, None
    for token, bound in tokens:
        if _equal(given, token):
            found, accounts = True, bound
    return found, accounts


def _tokens(entries: Sequence[BoundToken]) -> list[tuple[str, frozenset[str] | None]]:
    return [(t.token.get_secret_value(), frozenset(t.accounts) or None) for t in entries]


@dataclass(frozen=True)
class Admission:
    """A request :meth:`UploadAuth.check` let in: its path segments (a leading URL token
    removed) and the Kazoo account ids its credential is bound to (None: any account)."""

    segments: list[str]
    accounts: frozenset[str] | None = None

    def allows(self, account_id: str | None) -> bool:
        """True when the credential may touch recordings of ``account_id`` (an unbound
        credential: any, even None; a bound one: only its own accounts, compared
        case-insensitively)."""
        if self.accounts is None:
            return True
        return account_id is not None and account_id.lower() in self.accounts

    def require(self, account_id: str | None) -> None:
        """Raise 403 ``account_not_allowed`` unless :meth:`allows` ``account_id``."""
        if self.allows(account_id):
            return
        if account_id is None:
            raise Forbidden("account_not_allowed",
                            "this credential is bound to accounts, and the request names "
                            "none (send the account id in the path, the query or the "
                            "JSON metadata)")
        raise Forbidden("account_not_allowed",
                        f"this credential may not touch recordings of account {account_id}")


def parse_authorization(authorization: str | None) -> tuple[str, str]:
    """An ``Authorization`` header as (lower-case scheme, value); ("", "") when absent."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return scheme.lower(), value.strip()


def bearer_matches(authorization: str | None, tokens: Sequence[str]) -> bool:
    """True when ``authorization`` is ``Bearer <one of tokens>`` (constant-time)."""
    scheme, value = parse_authorization(authorization)
    return scheme == "bearer" and matches_any(value, tokens)


def require_scope(name: str, scopes: Collection[Scope], scope: Scope) -> None:
    """Raise 403 ``missing_scope`` unless the API token ``name`` (its ``scopes``) has
    ``scope``."""
    if scope not in scopes:
        raise Forbidden("missing_scope", f"the API token {name!r} lacks the {scope!r} scope "
                        "this needs", token=name)


def named_token(given: str, tokens: Sequence[ApiToken]) -> ApiToken | None:
    """The API token whose secret is ``given``, or None; every token is compared, in
    constant time."""
    found = None
    for token in tokens:
        if _equal(given, token.token.get_secret_value()):
            found = token
    return found


def matching_token(authorization: str | None, tokens: Sequence[ApiToken]) -> ApiToken | None:
    """The API token ``authorization`` (``Bearer <token>``) carries, or None."""
    scheme, value = parse_authorization(authorization)
    found = named_token(value, tokens)
    return found if scheme == "bearer" else None


class UploadAuth:
    """Checks one request against ``[auth]``."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._networks = list(settings.allow_networks)
        self._basic = [(c.username, c.password.get_secret_value(),
                        frozenset(c.accounts) or None) for c in settings.basic]
        self._bearer = _tokens(settings.bearer)
        self._url_tokens = _tokens(settings.url)

    def check(
        self,
        remote: str | None,
        authorization: str | None,
        segments: list[str],
        query: Mapping[str, str],
    ) -> Admission:
        """Admit or refuse a request; the :class:`Admission` holds ``segments`` without a
        leading URL token and the accounts the matching credential is bound to.

        ``remote``: the peer address; ``authorization``: the Authorization header;
        ``segments``: decoded path segments after the route prefix; ``query``: decoded query.
        Raises 403 ``address_not_allowed`` outside ``allow_networks``, 401
        ``unauthorized`` when credentials are configured and none of them matched.
        """
        self.check_network(remote)
        if not self.settings.has_credentials:
            return Admission(segments)
        if self._url_tokens and segments:
            found, accounts = _match(segments[0], self._url_tokens)
            if found:
                return Admission(segments[1:], accounts)
        found, accounts = self.match_credentials(authorization, query)
        if found:
            return Admission(segments, accounts)
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

    def match_credentials(self, authorization: str | None, query: Mapping[str, str]
                          ) -> tuple[bool, frozenset[str] | None]:
        """Whether the Authorization header or the query token matches a credential, and
        the accounts that credential is bound to (None: any)."""
        scheme, value = parse_authorization(authorization)
        if scheme == "basic" and self._basic:
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except ValueError:  # not base64 (binascii.Error; non-ASCII text), or not UTF-8
                return False, None
            found, accounts = False, None
            for name, secret, bound in self._basic:
                if _equal(user, name) & _equal(password, secret) & bool(sep):
                    found, accounts = True, bound
            return found, accounts
        if scheme == "bearer" and self._bearer:
            return _match(value, self._bearer)
        token = query.get(self.settings.query_token_param)
        if not self._url_tokens or token is None:
            return False, None
        return _match(token, self._url_tokens)

    def refusal(self) -> Unauthorized:
        return Unauthorized("unauthorized", "missing or wrong credentials",
                            challenge='Basic realm="recsink"' if self._basic else None)
