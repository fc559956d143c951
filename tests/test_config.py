"""Settings (recsink/config.py) and the command line (recsink/cli.py): defaults, TOML file,
``RECSINK_*`` overrides, errors that name their key, the open-listener guard, and
``recsink check-config`` masking secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydantic import ValidationError

from recsink.config import (
    AuthSettings,
    ConfigError,
    Settings,
    dsn_password,
    is_loopback,
    load_settings,
    mask_dsn,
)
from tests.conftest import ACCOUNT

MASK = "**********"
PASSWORD = "pa55-w0rd-Zq9"
URL_TOKEN = "s3cr3t-url-token-Xy7"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RECSINK_* variable from the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("RECSINK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, data: dict[str, Any], name: str = "recsink.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def config_error(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(tmp_path, data))
    return str(info.value)


# --- defaults and sources --------------------------------------------------------------


def test_defaults_are_the_design_core_keys() -> None:
    """With no file and no environment, the core keys have DESIGN.md's values."""
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.storage.backend == "disk"
    assert settings.storage.disk.root == Path("var/recordings")
    assert settings.storage.disk.fsync is True
    assert settings.catalog.path == Path("var/recsink.db")
    assert settings.kazoo.prefixes == ["/kazoo"]
    assert not settings.auth.has_credentials
    assert settings.secrets() == []


def test_load_settings_without_path_equals_settings() -> None:
    """``load_settings()`` with no file is the same as ``Settings()``."""
    assert load_settings() == Settings()


def test_toml_file_is_read(tmp_path: Path) -> None:
    """Values in the TOML file replace the defaults; keys it omits keep theirs."""
    path = write_toml(tmp_path, {
        "server": {"port": 9000},
        "storage": {"disk": {"root": "/data/recordings", "fsync": False},
                    "key_template": "{source}/{call_id}/{id}.{ext}"},
        "catalog": {"path": "/data/catalog.db"},
        "kazoo": {"prefixes": ["kazoo/", "/upload"]},
        "auth": {"basic": [{"username": "kazoo", "password": PASSWORD}],
                 "url_tokens": [URL_TOKEN]},
    })
    settings = load_settings(path)
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 9000
    assert settings.storage.disk.root == Path("/data/recordings")
    assert settings.storage.disk.fsync is False
    assert settings.storage.key_template == "{source}/{call_id}/{id}.{ext}"
    assert settings.catalog.path == Path("/data/catalog.db")
    assert settings.kazoo.prefixes == ["/kazoo", "/upload"]
    assert settings.auth.basic[0].username == "kazoo"
    assert settings.auth.basic[0].password.get_secret_value() == PASSWORD
    assert sorted(settings.secrets()) == sorted([PASSWORD, URL_TOKEN])


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RECSINK_SERVER__PORT and RECSINK_STORAGE__DISK__ROOT override the file; the file's
    other keys in the same sections survive."""
    path = write_toml(tmp_path, {"server": {"port": 9000, "host": "localhost"},
                                 "storage": {"disk": {"root": "/file/root", "fsync": False}}})
    monkeypatch.setenv("RECSINK_SERVER__PORT", "9100")
    monkeypatch.setenv("RECSINK_STORAGE__DISK__ROOT", "/env/root")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.server.host == "localhost"
    assert settings.storage.disk.root == Path("/env/root")
    assert settings.storage.disk.fsync is False


def test_environment_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECSINK_* overrides apply on top of the defaults when there is no file."""
    monkeypatch.setenv("RECSINK_SERVER__PORT", "8181")
    assert load_settings().server.port == 8181


def test_list_override_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list key takes a JSON value from the environment, replacing the file's list."""
    path = write_toml(tmp_path, {"auth": {"url_tokens": ["from-file"]}})
    monkeypatch.setenv("RECSINK_AUTH__URL_TOKENS", '["x"]')
    settings = load_settings(path)
    assert [t.get_secret_value() for t in settings.auth.url_tokens] == ["x"]
    assert settings.secrets() == ["x"]


# --- errors name their key ---------------------------------------------------------------


def test_wrong_type_names_key(tmp_path: Path) -> None:
    """A value of the wrong type is reported as ``storage.disk.fsync: …``."""
    message = config_error(tmp_path, {"storage": {"disk": {"fsync": "maybe"}}})
    assert "storage.disk.fsync: " in message


def test_unknown_key_is_reported(tmp_path: Path) -> None:
    """A typo in a key name is ``server.prot: unknown key``, not silently ignored."""
    message = config_error(tmp_path, {"server": {"prot": 8081}})
    assert "server.prot: unknown key" in message


def test_unknown_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in an environment override is reported the same way."""
    monkeypatch.setenv("RECSINK_SERVER__PROT", "8081")
    with pytest.raises(ConfigError, match=r"server\.prot: unknown key"):
        load_settings()


def test_bad_environment_value_names_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-integer RECSINK_SERVER__PORT is reported as ``server.port: …``."""
    monkeypatch.setenv("RECSINK_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port: "):
        load_settings()


def test_error_lines_start_with_the_file(tmp_path: Path) -> None:
    """Each problem is one line naming the file and its key; all problems are listed."""
    path = write_toml(tmp_path, {"server": {"prot": 1, "port": -1}})
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert f"{path}: server.prot: unknown key" in lines
    assert any(line.startswith(f"{path}: server.port: ") for line in lines)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{account_id}/{foo}.{ext}", "unknown variable(s) ['foo']"),
        ("{}.{ext}", "unknown variable(s)"),
        ("{account_id}/{id}", "{ext}"),
        ("/{id}.{ext}", "relative"),
        ("../{id}.{ext}", "'..'"),
        ("{id.{ext}", "not a valid template"),
    ],
    ids=["unknown", "positional", "no-ext", "absolute", "dotdot", "syntax"],
)
def test_bad_key_template_names_key(tmp_path: Path, template: str, fragment: str) -> None:
    """A bad ``storage.key_template`` is reported under that key with the reason."""
    message = config_error(tmp_path, {"storage": {"key_template": template}})
    assert "storage.key_template: " in message
    assert fragment in message


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [("/v1", "would hide"), ("/", "would hide"), ("healthz/x", "would hide"),
     ("/ka%zoo", "plain ASCII"), ("/kä", "plain ASCII"), ("/k{x}", "plain ASCII")],
)
def test_bad_kazoo_prefix_names_key(tmp_path: Path, prefix: str, fragment: str) -> None:
    """A Kazoo prefix that hides recsink's own routes or is not plain ASCII is refused under
    ``kazoo.prefixes``."""
    message = config_error(tmp_path, {"kazoo": {"prefixes": [prefix]}})
    assert "kazoo.prefixes" in message
    assert fragment in message


def test_empty_kazoo_prefix_list_refused(tmp_path: Path) -> None:
    """At least one Kazoo prefix is required."""
    assert "kazoo.prefixes" in config_error(tmp_path, {"kazoo": {"prefixes": []}})


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    """A config path that cannot be read is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_invalid_toml_is_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError saying so."""
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


# --- the open-listener guard -------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "rec.example.com"])
def test_non_loopback_without_credentials_refused(tmp_path: Path, host: str) -> None:
    """Listening on a non-loopback host with no credentials is refused, naming
    ``auth.allow_unauthenticated``."""
    message = config_error(tmp_path, {"server": {"host": host}})
    assert "auth.allow_unauthenticated" in message
    assert repr(host) in message


@pytest.mark.parametrize(
    "auth",
    [
        {"basic": [{"username": "kazoo", "password": PASSWORD}]},
        {"url_tokens": [URL_TOKEN]},
        {"bearer_tokens": ["b34rer"]},
        {"allow_unauthenticated": True},
    ],
    ids=["basic", "url-token", "bearer", "allow-unauthenticated"],
)
def test_non_loopback_accepted_with_credentials(tmp_path: Path, auth: dict[str, Any]) -> None:
    """A non-loopback host is accepted with any credential or allow_unauthenticated = true."""
    settings = load_settings(write_toml(tmp_path, {"server": {"host": "0.0.0.0"}, "auth": auth}))
    assert settings.server.host == "0.0.0.0"


def test_non_loopback_from_environment_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard also applies when the host comes from RECSINK_SERVER__HOST."""
    monkeypatch.setenv("RECSINK_SERVER__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match=r"auth\.allow_unauthenticated"):
        load_settings()


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("192.0.2.1", False), ("example.com", False), ("", False), ("localhost.example", False)],
)
def test_is_loopback(host: str, expected: bool) -> None:
    """``localhost`` and loopback IP literals (127/8, ::1) are loopback; nothing else is."""
    assert is_loopback(host) is expected


# --- the command line ------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECSINK_")}
    return subprocess.run(
        [sys.executable, "-m", "recsink", *args], capture_output=True, text=True, timeout=60,
        env={**clean, **(env or {})}, check=False)


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    """``check-config`` exits 0 and prints the configuration with every secret masked."""
    path = write_toml(tmp_path, {
        "server": {"port": 9000},
        "auth": {"basic": [{"username": "kazoo", "password": PASSWORD}],
                 "url_tokens": [URL_TOKEN, {"token": "b0und-t0ken-Zx9", "accounts": [ACCOUNT]}]},
    })
    result = run_cli("check-config", "--config", str(path),
                     env={"RECSINK_API__TOKENS": '["api-t0ken-Qw3"]'})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["server"]["port"] == 9000
    assert printed["auth"]["basic"] == [{"username": "kazoo", "password": MASK, "accounts": []}]
    assert printed["auth"]["url_tokens"] == [MASK, {"token": MASK, "accounts": [ACCOUNT]}]
    assert printed["api"]["tokens"] == [MASK]
    for secret in (PASSWORD, URL_TOKEN, "api-t0ken-Qw3", "b0und-t0ken-Zx9"):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_check_config_without_file_prints_defaults() -> None:
    """``check-config`` with no ``--config`` prints the defaults and exits 0."""
    result = run_cli("check-config")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["server"] == {**printed["server"], "host": "127.0.0.1", "port": 8080}
    assert printed["storage"]["disk"] == {"root": "var/recordings", "fsync": True}
    assert printed["catalog"]["path"] == "var/recsink.db"
    assert printed["catalog"]["url"] == ""


def test_check_config_bad_config_exits_2(tmp_path: Path) -> None:
    """A bad configuration exits 2 and stderr names the bad key."""
    path = write_toml(tmp_path, {"storage": {"disk": {"fsync": "maybe"}},
                                 "auth": {"url_tokens": [URL_TOKEN]}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "storage.disk.fsync" in result.stderr
    assert result.stdout == ""
    assert URL_TOKEN not in result.stderr


def test_help_works() -> None:
    """``python -m recsink --help`` and the ``recsink`` script exit 0 listing both commands."""
    results = [run_cli("--help")]
    script = Path(sys.executable).with_name("recsink")
    if script.exists():
        results.append(subprocess.run([str(script), "--help"], capture_output=True, text=True,
                                      timeout=60, check=False))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout
        assert "check-config" in result.stdout


def test_serve_refuses_an_open_non_loopback_listener(tmp_path: Path) -> None:
    """``recsink serve`` on 0.0.0.0 with no credentials exits 2 before listening, naming
    ``auth.allow_unauthenticated``."""
    env = {**os.environ, "RECSINK_SERVER__HOST": "0.0.0.0", "RECSINK_SERVER__PORT": "0"}
    result = subprocess.run([sys.executable, "-m", "recsink", "serve"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "auth.allow_unauthenticated" in result.stderr
    assert "server.listening" not in result.stdout
    assert not (tmp_path / "var").exists()


def test_s3_settings_are_validated_with_their_keys() -> None:
    """The s3 backend needs a destination; malformed destinations, credentials and part
    sizes are refused with errors that name their key; credentials are secret."""
    cases = {
        "storage.s3.url: required": {"storage": {"backend": "s3"}},
        "storage.s3.url: must be s3://": {"storage": {"s3": {"url": "http://bucket"}}},
        "storage.s3.credentials: must be AccessKey:SecretKey:Region":
            {"storage": {"s3": {"credentials": "AK:SK"}}},
        "storage.s3.part_size": {"storage": {"s3": {"part_size": 1024}}},
        "max_buffer_bytes must hold at least two parts":
            {"storage": {"s3": {"part_size": 8 * 1024 * 1024,
                                "max_buffer_bytes": 12 * 1024 * 1024}}},
    }
    for expected, data in cases.items():
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("*", r"\*")):
            load_settings_from(data)
    settings = Settings(storage={"backend": "s3", "s3": {
        "url": "gs://bucket/p", "credentials": "GOOGKEY:secret:auto"}})
    assert "GOOGKEY" in settings.secrets()
    assert "secret" in settings.secrets()
    assert "GOOGKEY" not in repr(settings)


def test_catalog_url_is_checked_and_its_password_masked() -> None:
    """``catalog.url`` must be a PostgreSQL URL or DSN; its password is a secret for the
    log redactor and never shows in the effective configuration or the settings' repr."""
    with pytest.raises(ConfigError, match=r"catalog\.url: must be a postgresql:// URL"):
        load_settings_from({"catalog": {"url": "mysql://db/recsink"}})
    settings = Settings(catalog={"url": "postgresql://recsink:s3cr%40t@db:5432/recsink"})
    assert "s3cr%40t" in settings.secrets()
    assert "s3cr%40t" not in repr(settings)
    assert mask_dsn(settings.catalog.url.get_secret_value()) == \
        "postgresql://recsink:***@db:5432/recsink"
    assert mask_dsn("host=db dbname=recsink password=pw") == "host=db dbname=recsink password=***"
    assert dsn_password("postgresql://recsink@db/recsink") is None


def test_check_config_masks_only_the_catalog_password(tmp_path: Path) -> None:
    """``check-config`` shows the catalog URL with only its password masked."""
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"catalog": {"url": "postgresql://rs:pw@db:5432/rs"}}))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["catalog"]["url"] == "postgresql://rs:***@db:5432/rs"
    assert "pw@" not in result.stdout


def load_settings_from(data: dict[str, Any]) -> Settings:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(tomli_w.dumps(data))
        return load_settings(path)


def test_credentials_bound_to_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auth.basic`` entries take ``accounts``; ``auth.url_tokens`` and
    ``auth.bearer_tokens`` take ``{token, accounts}`` tables beside plain strings, from TOML
    and from the environment's JSON; account ids are lower-cased, secrets all redacted."""
    monkeypatch.setenv("RECSINK_AUTH__URL_TOKENS", json.dumps(
        ["plain-url", {"token": "bound-url", "accounts": [ACCOUNT.upper()]}]))
    settings = Settings(auth={
        "basic": [{"username": "a", "password": "pw-a", "accounts": [ACCOUNT]},
                  {"username": "b", "password": "pw-b"}],
        "bearer_tokens": [{"token": "bound-bearer", "accounts": [ACCOUNT]}, "plain-bearer"]})
    assert [c.accounts for c in settings.auth.basic] == [[ACCOUNT], []]
    assert [(t.token.get_secret_value(), t.accounts) for t in settings.auth.url] == [
        ("plain-url", []), ("bound-url", [ACCOUNT])]
    assert [(t.token.get_secret_value(), t.accounts) for t in settings.auth.bearer] == [
        ("bound-bearer", [ACCOUNT]), ("plain-bearer", [])]
    assert {"pw-a", "pw-b", "plain-url", "bound-url", "bound-bearer",
            "plain-bearer"} <= set(settings.secrets())


@pytest.mark.parametrize("accounts", [["not-hex"], [ACCOUNT[:-1]], [ACCOUNT + "0"]])
def test_bound_accounts_must_be_kazoo_ids(accounts: list[str]) -> None:
    """An account a credential is bound to must be a 32-hex Kazoo account id."""
    with pytest.raises(ValidationError, match="32 hex"):
        AuthSettings(url_tokens=[{"token": "t", "accounts": accounts}])
