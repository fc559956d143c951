"""The shipped documentation stays true: config.example.toml and the README's reference
cover every setting, the README's test command is the one CI runs, and its Sinch signing
recipe, followed literally, signs callbacks that a real recsink accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from recsink.config import Settings, load_settings
from tests.conftest import REPO, RunningServer, exchange


def keys_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for field_name, info in model.model_fields.items():
        name = info.alias or field_name  # the key as written in TOML
        annotation: Any = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= keys_of(annotation, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def flatten(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= flatten(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_example_config_documents_every_key_with_its_default() -> None:
    """config.example.toml holds every setting, and loading it gives the built-in defaults."""
    path = REPO / "config.example.toml"
    with path.open("rb") as fh:
        assert flatten(tomllib.load(fh)) == keys_of(Settings)
    assert load_settings(path) == Settings()


def test_readme_reference_lists_every_key() -> None:
    """The README's configuration table names every setting."""
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_.]+)` \|", readme, re.MULTILINE))
    assert listed == keys_of(Settings)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts exactly the README's test command (the line after its marker)."""
    readme = (REPO / "README.md").read_text()
    after = readme.split("<!-- test-command -->\n```sh\n", 1)[1].split("\n", 1)[0]
    assert after.endswith(".venv/bin/pytest")
    script = (REPO / ".ci" / "run").read_text()
    extract = re.search(r"test_command=\$\((awk .*README\.md)\)", script)
    assert extract is not None
    got = subprocess.run(["bash", "-c", extract.group(1)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert got == after


# -- the README's Sinch signing recipe ------------------------------------------------------

def readme_block(marker: str, language: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in the README, without its fences."""
    readme = (REPO / "README.md").read_text()
    return readme.split(f"<!-- {marker} -->\n```{language}\n", 1)[1].split("\n```\n", 1)[0]


def sinch_example() -> dict[str, str]:
    """The README's worked Sinch example: ``name: value`` lines."""
    lines = readme_block("sinch-signing-example", "text").splitlines()
    return {name: value.strip() for name, _, value in (ln.partition(":") for ln in lines)}


def follow_sinch_recipe(example: dict[str, str], timestamp: str) -> tuple[str, str, str]:
    """The README's steps 1-6, literally: (Content-MD5, string to sign, signature)."""
    body = example["body"].encode()
    content_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    string_to_sign = "\n".join(["POST", content_md5, example["content-type"],
                                "x-timestamp:" + timestamp, example["path"]])
    key = base64.b64decode(example["application secret"])
    digest = hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()
    return content_md5, string_to_sign, base64.b64encode(digest).decode()


def sinch_post(example: dict[str, str], timestamp: str, authorization: str) -> bytes:
    body = example["body"].encode()
    return (f"POST {example['path']} HTTP/1.1\r\nhost: recsink.example.com\r\n"
            f"content-type: {example['content-type']}\r\nx-timestamp: {timestamp}\r\n"
            f"authorization: {authorization}\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


def sinch_readme_config(example: dict[str, str], **sinch: Any) -> dict[str, Any]:
    return {"sinch": {"path": example["path"], **sinch, "applications": [
        {"key": example["application key"], "secret": example["application secret"]}]}}


def test_readme_sinch_example_follows_its_recipe() -> None:
    """The README's Sinch example, recomputed by following its recipe step by step, gives
    its Content-MD5, its string to sign (newlines included) and its signature byte for
    byte."""
    example = sinch_example()
    content_md5, string_to_sign, signature = follow_sinch_recipe(example,
                                                                 example["x-timestamp"])
    assert content_md5 == example["content-md5"]
    assert string_to_sign == readme_block("sinch-string-to-sign", "text")
    assert signature == example["signature"]
    assert example["authorization"] == f"application {example['application key']}:{signature}"


def test_readme_sinch_example_is_accepted_by_recsink(
    start_server: Callable[..., RunningServer],
) -> None:
    """A real recsink configured with the README's test application accepts its example
    verbatim when its window reaches back to the example's timestamp, refuses it as too old
    by default, and accepts the recipe followed with the current time (200, empty body)."""
    example = sinch_example()
    patient = start_server("patient", **sinch_readme_config(example, timestamp_window=1e11))
    verbatim = sinch_post(example, example["x-timestamp"], example["authorization"])
    reply = exchange(patient.port, verbatim)
    assert (reply.status, reply.body) == (200, b"")
    default = start_server("default", **sinch_readme_config(example))
    reply = exchange(default.port, verbatim)
    assert (reply.status, reply.json()["error"]) == (401, "bad_signature")
    assert " old " in reply.json()["detail"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = follow_sinch_recipe(example, now)[2]
    reply = exchange(default.port, sinch_post(
        example, now, f"application {example['application key']}:{signature}"))
    assert (reply.status, reply.body) == (200, b"")


def test_readme_sinch_shell_recipe_is_accepted_by_recsink(
    start_server: Callable[..., RunningServer],
) -> None:
    """The README's openssl + curl script, run as written against a real recsink (its URL
    swapped for the server's), gets 200."""
    missing = [tool for tool in ("bash", "openssl", "curl", "od") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the README's Sinch script needs {missing}")
        pytest.skip(f"the README's Sinch script needs {missing}")
    example = sinch_example()
    server = start_server(**sinch_readme_config(example))
    script = readme_block("sinch-signing-shell", "sh")
    assert script.count("https://recsink.example.com") == 1
    script = script.replace("https://recsink.example.com", server.base)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 200 OK"), done.stdout
    assert len(server.events("sinch.recording_finished")) == 1
