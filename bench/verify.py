"""Verification after every row: every stored copy has its source's sha256 (or, on the S3
stand-in that keeps no bytes, its size and the ETag S3 gives the source's bytes), the counts
match, nothing is left half-done (staging files, nginx's body temp files, open multipart
uploads). For recsink's S3 rows, the record recsink's catalog holds for each upload (read
back through the recsink process's ``/v1/recordings`` API) must be ``completed`` with the
source's sha256 and size and name the object checked: a multipart object carries only the
metadata known when it was created (its ``recsink-id``), the sha256 lives in the catalog.
Each function returns a list of problems (empty: verified); the file verifiers also remove
what the row stored so the next row starts clean.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.bodies import Body, sha256_file
from bench.loadgen import Load, Reply
from tests.s3support import S3Client, all_objects, list_multipart_uploads, object_sha256

#: Problems listed per row at most (the count is always given).
SHOWN = 5


def _limit(problems: list[str]) -> list[str]:
    if len(problems) <= SHOWN:
        return problems
    return [*problems[:SHOWN], f"... and {len(problems) - SHOWN} more"]


def statuses(load: Load, expected: frozenset[int]) -> list[str]:
    """Problems for replies whose status is not one of ``expected``."""
    return [f"{r.request.tag}: status {r.status} {r.error} {r.body[:200]!r}"
            for r in load.unexpected(expected)]


def _hash_all(pairs: Iterable[tuple[str, Callable[[], str], str]]) -> list[str]:
    """Run the ``(name, digest function, expected)`` checks on 4 threads."""
    def check(item: tuple[str, Callable[[], str], str]) -> str | None:
        name, digest, expected = item
        try:
            got = digest()
        except Exception as exc:
            return f"{name}: cannot read: {exc}"
        return None if got == expected else f"{name}: sha256 {got} != source {expected}"
    with ThreadPoolExecutor(4) as pool:
        return [p for p in pool.map(check, list(pairs)) if p]


def _record(reply: Reply) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(reply.body)
    except ValueError:
        return {}
    return record


def _files(root: Path, skip: str) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and skip not in p.parts)


def _empty(directory: Path) -> None:
    """Remove everything below ``directory`` (kept itself)."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_stored(root: Path) -> None:
    """Remove every stored file under a recsink disk root (``.staging`` kept)."""
    for path in _files(root, ".staging"):
        path.unlink()


def recsink_disk(load: Load, bodies: Mapping[Path, Body], root: Path) -> list[str]:
    """A recsink disk row: 201s whose records carry the source's sha256 and a
    ``file://`` storage_url holding those bytes; as many files as uploads under the root;
    nothing left in ``.staging``."""
    problems = statuses(load, frozenset({201}))
    checks = []
    for reply in load.replies:
        body = bodies[reply.request.path] if reply.request.path else None
        record = _record(reply)
        if body is None or not record:
            continue
        if record.get("sha256") != body.sha256:
            problems.append(f"{reply.request.tag}: record sha256 {record.get('sha256')}")
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(
            str(record.get("storage_url", ""))).path))
        checks.append((str(path), lambda p=path: sha256_file(p), body.sha256))
    problems += _hash_all(checks)
    stored = _files(root, ".staging")
    if len(stored) != len(load.replies):
        problems.append(f"{len(stored)} files under {root}, {len(load.replies)} uploads")
    staging = root / ".staging"
    leftovers = list(staging.iterdir()) if staging.is_dir() else []
    if leftovers:
        problems.append(f"{len(leftovers)} staging leftovers in {staging}")
    for path in stored:
        path.unlink()
    return _limit(problems)


def plain_files(load: Load, bodies: Mapping[Path, Body], stored_at: Callable[[Reply], Path],
                root: Path, temp: Path | None, ok: frozenset[int]) -> list[str]:
    """nginx or dd: each reply's file (``stored_at``) has its source's sha256, ``root``
    holds as many files as requests, ``temp`` (nginx's body temp) is empty; then empties
    ``root``."""
    problems = statuses(load, ok)
    checks = []
    for reply in load.replies:
        assert reply.request.path is not None
        path = stored_at(reply)
        checks.append((str(path), lambda p=path: sha256_file(p),
                       bodies[reply.request.path].sha256))
    problems += _hash_all(checks)
    stored = _files(root, "\0")
    if len(stored) != len(load.replies):
        problems.append(f"{len(stored)} files under {root}, {len(load.replies)} requests")
    if temp is not None and any(temp.rglob("*")):
        problems.append(f"leftovers in {temp}")
    _empty(root)
    return _limit(problems)


def s3_keys(load: Load, bucket: str) -> dict[str, Reply]:
    """Object key -> reply, from recsink's ``s3://bucket/key`` storage URLs."""
    keys = {}
    for reply in load.replies:
        url = urllib.parse.urlsplit(str(_record(reply).get("storage_url", "")))
        if url.scheme == "s3" and url.netloc == bucket:
            keys[url.path.lstrip("/")] = reply
    return keys


#: Records per ``GET /v1/recordings`` (the API's largest ``limit``).
API_LIMIT = 1000
#: call id -> the catalog's records for it (recording resources), from the recsink API.
Catalog = Mapping[str, list[dict[str, Any]]]


def _get_json(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=60) as response:
        return json.loads(response.read())


def catalog_records(api: str, call_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The records recsink's catalog holds for ``call_ids``, read through the recsink
    process at ``api`` (``http://127.0.0.1:<port>``): one ``GET /v1/recordings?limit=``
    for the newest, then one ``?call_id=`` for each call not among them."""
    wanted = set(call_ids)
    found: dict[str, list[dict[str, Any]]] = {}
    limit = min(API_LIMIT, len(wanted) + 1)
    for record in _get_json(f"{api}/v1/recordings?limit={limit}")["recordings"]:
        if record.get("call_id") in wanted:
            found.setdefault(record["call_id"], []).append(record)
    for call_id in sorted(wanted - found.keys()):
        query = urllib.parse.urlencode({"call_id": call_id, "limit": 10})
        records = _get_json(f"{api}/v1/recordings?{query}")["recordings"]
        if records:
            found[call_id] = records
    return found


def _catalog_problems(key: str, reply: Reply, body: Body,
                      catalog: Catalog) -> tuple[list[str], str]:
    """Problems with the catalog's record of one recsink upload (one record for its call,
    the one the 201 named, ``completed``, the source's sha256 and size, the object ``key``
    as its ``storage_url``), and the record's id."""
    records = catalog.get(reply.request.tag, [])
    if len(records) != 1:
        return [f"{key}: {len(records)} catalog records for call {reply.request.tag}"], ""
    [record] = records
    answered = _record(reply)
    problems = [f"{key}: catalog {name} {record.get(name)!r}, expected {want!r}"
                for name, want in (("id", answered.get("id")), ("status", "completed"),
                                   ("sha256", body.sha256), ("byte_size", body.size),
                                   ("storage_url", answered.get("storage_url")))
                if record.get(name) != want]
    return problems, str(record.get("id") or "")


def moto(s3: S3Client, bucket: str, prefix: str, keys: Mapping[str, Reply],
         bodies: Mapping[Path, Body], load: Load, ok: frozenset[int],
         catalog: Catalog | None = None) -> list[str]:
    """Objects in moto: exactly one per upload under ``prefix``, each read back and hashed
    against its source; no multipart upload open. For recsink (``catalog``, from
    :func:`catalog_records`), each upload's catalog record as :func:`_catalog_problems`
    checks it."""
    problems = statuses(load, ok)
    objects = set(all_objects(s3, bucket, prefix))
    if objects != set(keys):
        problems.append(f"{len(objects)} objects under {bucket}/{prefix}, {len(keys)} uploads "
                        f"named (e.g. extra {sorted(objects - set(keys))[:2]}, missing "
                        f"{sorted(set(keys) - objects)[:2]})")
    checks = []
    for key, reply in keys.items():
        assert reply.request.path is not None
        body = bodies[reply.request.path]
        checks.append((key, lambda k=key: object_sha256(s3, bucket, k), body.sha256))
        if catalog is not None:
            problems += _catalog_problems(key, reply, body, catalog)[0]
    problems += _hash_all(checks)
    pending = list_multipart_uploads(s3, bucket)
    if pending:
        problems.append(f"{len(pending)} multipart uploads left open")
    return _limit(problems)


def standin(listing: Mapping[str, Any], bucket: str, prefix: str, keys: Mapping[str, Reply],
            bodies: Mapping[Path, Body], load: Load, ok: frozenset[int], part_size: int,
            catalog: Catalog | None = None) -> list[str]:
    """Objects in the discard stand-in (its ``objects()`` listing): exactly one per upload
    under ``prefix``, each of its source's size and with the ETag S3 gives its source cut
    at ``part_size``; no upload open. For recsink (``catalog``, from
    :func:`catalog_records`), also each upload's catalog record (:func:`_catalog_problems`:
    the source's sha256), the record's id as the object's ``x-amz-meta-recsink-id``, and
    on an object stored by a single PutObject (smaller than a part) the source's sha256 as
    its ``x-amz-meta-sha256``."""
    problems = statuses(load, ok)
    objects = {k.partition("/")[2]: v for k, v in listing["objects"].items()
               if k.startswith(f"{bucket}/{prefix}/")}
    if set(objects) != set(keys):
        problems.append(f"{len(objects)} objects under {bucket}/{prefix}, {len(keys)} uploads")
    for key, reply in keys.items():
        assert reply.request.path is not None
        body = bodies[reply.request.path]
        obj = objects.get(key)
        if obj is None:
            continue
        if obj["etag"] != body.s3_etag(part_size):
            problems.append(f"{key}: ETag {obj['etag']} != {body.s3_etag(part_size)} of the "
                            "source")
        if obj["size"] != body.size:
            problems.append(f"{key}: {obj['size']} bytes, source {body.size}")
        if catalog is None:
            continue
        found, record_id = _catalog_problems(key, reply, body, catalog)
        problems += found
        meta = obj["metadata"]
        if meta.get("recsink-id") != record_id:
            problems.append(f"{key}: x-amz-meta-recsink-id {meta.get('recsink-id')!r}, "
                            f"catalog record {record_id!r}")
        if body.size <= part_size and meta.get("sha256") != body.sha256:
            problems.append(f"{key}: single PutObject with x-amz-meta-sha256 "
                            f"{meta.get('sha256')!r}")
    if listing["uploads"]:
        problems.append(f"{len(listing['uploads'])} multipart uploads left open")
    return _limit(problems)
