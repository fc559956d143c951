"""Recording bodies as files on disk, generated once per run, with their digests known.

Each body is a valid RIFF/WAVE file (recsink sniffs the format) of pseudo-random 16-bit PCM
(:func:`bench.common.wav_blocks`, seeded per file, so every upload's bytes differ and no
dedupe can short-circuit a store). The load generator streams them with ``os.sendfile``;
the verifiers compare what each server stored with ``sha256`` (and, for an S3 stand-in that
keeps no bytes, with the ETag S3 gives the same bytes cut at a part size).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import wav_blocks

#: Smallest body: a WAV header plus a little PCM.
MIN_SIZE = 4096


@dataclass
class Body:
    """One recording on disk."""

    path: Path
    size: int
    sha256: str
    _etags: dict[int, str] = field(default_factory=dict, repr=False)

    def s3_etag(self, part_size: int) -> str:
        """The ETag S3 gives these bytes (unquoted): the MD5 for a single PutObject (body
        of at most ``part_size``, as recsink and the plain uploader send it), else the MD5
        of the parts' MD5s and ``-<parts>``."""
        if part_size not in self._etags:
            md5s = []
            with self.path.open("rb") as fh:
                while part := fh.read(part_size):
                    md5s.append(hashlib.md5(part, usedforsecurity=False).digest())
            if self.size <= part_size:
                etag = md5s[0].hex()
            else:
                etag = (hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
                        + f"-{len(md5s)}")
            self._etags[part_size] = etag
        return self._etags[part_size]


def write_body(path: Path, size: int, seed: int) -> Body:
    """Write one ``size``-byte WAV body at ``path``; return it with its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for block in wav_blocks(size, seed):
            fh.write(block)
            digest.update(block)
    return Body(path, size, digest.hexdigest())


def make_bodies(directory: Path, name: str, count: int, size: int, seed: int) -> list[Body]:
    """``count`` distinct bodies of ``size`` bytes in ``directory`` (``<name>-<i>.wav``),
    seeds ``seed``, ``seed + 1``, ...; flushed to disk so that their write-back does not
    land in a timed row."""
    directory.mkdir(parents=True, exist_ok=True)
    bodies = [write_body(directory / f"{name}-{i:04d}.wav", max(size, MIN_SIZE), seed + i)
              for i in range(count)]
    os.sync()
    return bodies


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
