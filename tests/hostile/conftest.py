"""Hypothesis profiles for the hostile-input suite, and its server.

``ci`` (the default): a fixed number of examples per test, derandomized (the same examples
on every run) and without an example database, so CI is repeatable and fast. ``dev``: many
more random examples, remembered in ``.hypothesis/`` so a failure found once is tried first
next time. Choose with ``HYPOTHESIS_PROFILE=dev``; ``HOSTILE_EXAMPLES=<n>`` sets the
per-test base count of either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.hostile.support import Hostile, secret_leaks

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile(
    "ci", max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "100")), derandomize=True,
    database=None, deadline=None, print_blob=True, suppress_health_check=_SUPPRESS)
settings.register_profile(
    "dev", max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "1000")), deadline=None,
    print_blob=True, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """One real ``recsink serve`` per test module (tests/hostile/support.py
    ``hostile_config``), stopped by pid at the end of the module; then its whole log is
    searched for every configured secret in every encoding (``secret_leaks``)."""
    target = Hostile.start(tmp_path_factory.mktemp("hostile"))
    yield target
    server = target.server
    if server.proc.poll() is None:
        server.stop()
    assert server.proc.returncode == 0, f"recsink exited {server.proc.returncode}"
    # Whatever the module sent, no configured secret reached the log in any encoding.
    leaks = secret_leaks(server.log_path)
    assert not leaks, "secrets in the log:\n" + "\n".join(leaks)
