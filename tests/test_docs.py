"""The shipped documentation stays true: config.example.toml and the README's reference
cover every setting, and the README's test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import tomllib
from typing import Any

from pydantic import BaseModel

from recsink.config import Settings, load_settings
from tests.conftest import REPO


def keys_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
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
