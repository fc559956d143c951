"""Versioned schema changes, one SQL file per version and engine:
``migrations/<engine>/<NNNN>_<name>.sql``. Both engines have the same versions, so "schema
version N" means the same columns everywhere.

Changes are additive (new columns, indexes, data fixes), so instances still running the
previous version keep working while the fleet is upgraded one instance at a time
(README "Running a fleet": ``recsink migrate`` first). A catalog whose version is newer than
the newest file here is refused (:class:`~recsink.catalog.base.SchemaTooNew`).
"""

from __future__ import annotations

from importlib import resources


def migrations(engine: str) -> dict[int, str]:
    """Every version of ``engine`` ("sqlite" or "postgres") and its SQL, in order."""
    found = {}
    for entry in resources.files(__package__).joinpath(engine).iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            assert version not in found, f"two {engine} migrations are version {version}"
            found[version] = entry.read_text(encoding="utf-8")
    return dict(sorted(found.items()))


#: The schema version this recsink writes and understands.
LATEST = max(migrations("sqlite"))
assert max(migrations("postgres")) == LATEST, "both engines have every version"


def too_new(version: int, where: str) -> str:
    """The message for a catalog at ``version`` that this recsink is too old for."""
    return (f"the catalog at {where} has schema version {version}, newer than this recsink "
            f"understands ({LATEST}): it was migrated by a newer recsink; upgrade this one "
            "(or point it at another catalog)")
