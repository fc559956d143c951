"""Reads and writes across Kazoo accounts: the GET probe answers only when the path's
account, name and ids are the stored record's, and credentials bound to accounts
(``auth.basic`` ``accounts``, ``{token, accounts}`` tables among ``auth.url_tokens`` and
``auth.bearer_tokens``) touch only those accounts' recordings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.conftest import ACCOUNT, OWNER, TESTBODY, stored_files

OTHER = "0123456789abcdef0123456789abcdef"
AUTH = {
    "basic": [{"username": "a-only", "password": "pw-a", "accounts": [ACCOUNT]},
              {"username": "admin", "password": "pw-admin"}],
    "url_tokens": ["plain-token", {"token": "a-token", "accounts": [ACCOUNT.upper()]}],
    "bearer_tokens": [{"token": "a-bearer", "accounts": [ACCOUNT]}],
}
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:pw-admin").decode()}
A_ONLY = {"Authorization": "Basic " + base64.b64encode(b"a-only:pw-a").decode()}
A_BEARER = {"Authorization": "Bearer a-bearer"}


def path_b(account: str, uid: str, name: str | None = None) -> str:
    return f"/kazoo/{account}/r-{uid}/{name or uid + '.mp3'}"


async def refused(reply: Any) -> None:
    assert reply.status == 403, await reply.text()
    if reply.method != "HEAD":
        assert (await reply.json())["error"] == "account_not_allowed"


async def test_probe_answers_only_the_record_the_path_names(make_client: Any) -> None:
    """A GET naming the stored recording id under another account, with another file name,
    or (path A) another call id or file name answers 404; the exact path answers 200."""
    client = await make_client()
    assert (await client.put(path_b(ACCOUNT, "b1"), data=TESTBODY)).status == 201
    query = f"call_id=c1&account_id={ACCOUNT}&recording_id=r-a1"
    assert (await client.put(f"/kazoo/call_recording_c1.mp3?{query}",
                             data=TESTBODY + b"a")).status == 201
    for target in (path_b(OTHER, "b1"), path_b(ACCOUNT, "b1", "other.mp3"),
                   "/kazoo/call_recording_c2.mp3?call_id=c2&recording_id=r-a1",
                   "/kazoo/call_recording_c1.wav?call_id=c1&recording_id=r-a1",
                   f"/kazoo/call_recording_c1.mp3?account_id={OTHER}&recording_id=r-a1"):
        reply = await client.get(target)
        assert reply.status == 404, target
        assert (await reply.json())["error"] == "not_found"
    ok_b = await client.get(path_b(ACCOUNT, "b1"))
    ok_a = await client.get(f"/kazoo/call_recording_c1.mp3?{query}")
    assert [(ok_b.status, await ok_b.read()), (ok_a.status, await ok_a.read())] == [
        (200, TESTBODY), (200, TESTBODY + b"a")]


async def test_bound_basic_user_reads_and_writes_only_its_accounts(
    make_client: Any, tmp_path: Path,
) -> None:
    """A Basic user bound to an account uploads and reads that account's recordings, and
    gets 403 ``account_not_allowed`` for another account's, with nothing stored."""
    client = await make_client(auth=AUTH)
    assert (await client.put(path_b(OTHER, "o1"), data=TESTBODY, headers=ADMIN)).status == 201
    before = stored_files(tmp_path / "recordings")
    await refused(await client.put(path_b(OTHER, "o2"), data=TESTBODY, headers=A_ONLY))
    await refused(await client.get(path_b(OTHER, "o1"), headers=A_ONLY))
    await refused(await client.head(path_b(OTHER, "o1"), headers=A_ONLY))
    assert stored_files(tmp_path / "recordings") == before
    mine = path_b(ACCOUNT, "m1")
    assert (await client.put(mine, data=TESTBODY + b"m", headers=A_ONLY)).status == 201
    got = await client.get(mine, headers=A_ONLY)
    assert (got.status, await got.read()) == (200, TESTBODY + b"m")
    admin = await client.get(path_b(OTHER, "o1"), headers=ADMIN)
    assert admin.status == 200  # an unbound credential keeps today's behaviour


async def test_bound_url_token_follows_the_path_a_query_account(make_client: Any) -> None:
    """A URL token bound to an account (in the path or the query) may upload a path-A
    recording whose query names that account, not another, and not one naming none."""
    client = await make_client(auth=AUTH)
    own = f"/kazoo/a-token/call_recording_u1.mp3?call_id=u1&account_id={ACCOUNT}"
    assert (await client.put(own, data=TESTBODY)).status == 201
    other = f"/kazoo/call_recording_u2.mp3?token=a-token&call_id=u2&account_id={OTHER}"
    await refused(await client.put(other, data=TESTBODY))
    await refused(await client.put("/kazoo/a-token/call_recording_u3.mp3?call_id=u3",
                                   data=TESTBODY))
    await refused(await client.put("/kazoo/a-token/u4.mp3", data=TESTBODY))  # path C
    plain = f"/kazoo/plain-token/call_recording_u5.mp3?call_id=u5&account_id={OTHER}"
    assert (await client.put(plain, data=TESTBODY)).status == 201


def multipart(meta: dict[str, Any], media: bytes) -> tuple[str, bytes]:
    boundary = "xXbOuNdArYXx"
    body = (f"\r\n--{boundary}\r\ncontent-type: application/json\r\n\r\n".encode()
            + json.dumps(meta).encode()
            + f"\r\n--{boundary}\r\ncontent-type: audio/mpeg\r\n\r\n".encode() + media
            + f"\r\n--{boundary}--".encode())
    return f"multipart/form-data; boundary={boundary}", body


async def test_bound_credential_checks_the_account_of_multipart_metadata(
    make_client: Any, tmp_path: Path,
) -> None:
    """When the account comes from a multipart upload's JSON part, a bound bearer token is
    refused (nothing stored) for another account and admitted for its own."""
    client = await make_client(auth=AUTH)
    for account, status in ((OTHER, 403), (ACCOUNT, 201)):
        content_type, body = multipart(
            {"call_id": f"mp-{account}", "custom_channel_vars": {"Account-ID": account}},
            TESTBODY + account.encode())
        reply = await client.post(f"/kazoo/mp-{account}.mp3", data=body, headers={
            **A_BEARER, "Content-Type": content_type})
        assert reply.status == status, await reply.text()
        if status == 403:
            assert stored_files(tmp_path / "recordings") == []


async def test_bound_credential_gets_no_other_accounts_record_by_its_key(
    make_client: Any,
) -> None:
    """Re-sending another account's recording id under its own account does not hand a
    bound credential the other account's record (403, not the idempotent 200)."""
    client = await make_client(auth=AUTH)
    theirs = f"/kazoo/call_recording_k1.mp3?call_id=k1&account_id={OTHER}&recording_id=r-k"
    assert (await client.put(theirs, data=TESTBODY, headers=ADMIN)).status == 201
    mine = f"/kazoo/call_recording_k1.mp3?call_id=k1&account_id={ACCOUNT}&recording_id=r-k"
    await refused(await client.put(mine, data=TESTBODY, headers=A_ONLY))


async def test_bound_credential_cannot_use_the_recording_api(make_client: Any) -> None:
    """The recording API (every account's records) refuses a bound credential with 403;
    unbound ones keep using it."""
    client = await make_client(auth=AUTH)
    await refused(await client.get("/v1/recordings", headers=A_ONLY))
    await refused(await client.get("/v1/recordings", params={"token": "a-token"}))
    assert (await client.get("/v1/recordings", headers=ADMIN)).status == 200


async def test_path_b_media_named_like_path_a_keeps_the_path_b_ids(make_client: Any) -> None:
    """A path-B upload whose media name is ``call_recording_<id>.<ext>`` keeps the account,
    owner and recording id of its path, and the GET probe finds it there."""
    client = await make_client()
    target = f"/kazoo/{ACCOUNT}/{OWNER}/r-b14/call_recording_x14.mp3"
    reply = await client.put(target, data=TESTBODY)
    assert reply.status == 201
    record = await reply.json()
    assert (record["account_id"], record["recording_id"]) == (ACCOUNT, "r-b14")
    assert (await client.get(target)).status == 200
