"""Audio facts: what a body is (sniffed from its first bytes) and how long it plays.

The format is decided from the bytes, never from Content-Type or the file name:

* ``wav``: ``RIFF<size>WAVE`` (RIFF/WAVE, as FreeSWITCH writes it);
* ``mp3``: an ID3v2 tag (``ID3`` + version < 0xFF + flags) or a bare MPEG audio frame header
  (11-bit frame sync, a defined version, layer, bitrate and sample rate).

Duration, sample rate and channels come from mutagen reading the stored file's headers in a
worker thread; nothing is loaded into memory.
"""

from __future__ import annotations

import enum
import hashlib
import io
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import mutagen
import mutagen.mp3
import mutagen.wave
from mutagen.mp3 import XingHeader, XingHeaderError

#: Bytes :func:`sniff` and :func:`is_probe` look at (fewer only when the body is shorter).
SNIFF_BYTES = 32


class Format(enum.StrEnum):
    """A stored body's format; the value is its file extension."""

    WAV = "wav"
    MP3 = "mp3"
    #: Kazoo's storage-plan credentials probe, ``some random content: <32 hex>`` (text/plain,
    #: specs/kazoo.md §5.5): stored only so that the GET probe can return it.
    PROBE = "txt"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {Format.WAV: "audio/wav", Format.MP3: "audio/mpeg", Format.PROBE: "text/plain"}


def media_type_for(extension: str) -> str | None:
    """The media type of a stored object from its file extension (a :class:`Format` value:
    ``wav``, ``mp3``, ``txt``), or None for any other extension."""
    try:
        return Format(extension).media_type
    except ValueError:
        return None


#: cb_storage.erl ``Content = <<"some random content: ", Random/binary>>`` (32 hex).
PROBE_PREFIX = b"some random content: "
PROBE_MAX_BYTES = 1024


def sniff(head: bytes) -> Format | None:
    """The format of a body that starts with ``head`` (>= :data:`SNIFF_BYTES` unless the
    body is shorter), or None when it is neither WAV nor MP3."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return Format.WAV
    if len(head) >= 10 and head[:3] == b"ID3" and head[3] != 0xFF and head[4] != 0xFF:
        return Format.MP3
    if len(head) >= 4 and _is_mpeg_frame_header(head):
        return Format.MP3
    return None


def is_probe(head: bytes) -> bool:
    """True when ``head`` starts like Kazoo's storage credentials probe file."""
    return head.startswith(PROBE_PREFIX)


def _is_mpeg_frame_header(head: bytes) -> bool:
    # AAAAAAAA AAABBCCD EEEEFFGH: A sync, B version (01 reserved), C layer (00 reserved),
    # E bitrate index (1111 invalid), F sample-rate index (11 reserved).
    if head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and rate != 0b11


@dataclass(frozen=True)
class AudioFacts:
    """What mutagen could read from a stored file; each field None when unknown.

    ``duration_ms``: play time in milliseconds (for MP3, the length of the whole MPEG stream,
    see :func:`_mpeg_stream_seconds`);
    ``sample_rate``: Hz; ``channels``: 1 mono, 2 stereo.
    """

    duration_ms: int | None = None
    sample_rate: int | None = None
    channels: int | None = None


#: Bytes of a body's start and end kept for :func:`probe_parts` (headers and trailing tags).
EDGE_BYTES = 64 * 1024


def probe(path: Path, fmt: Format) -> AudioFacts:
    """Read duration, sample rate and channels from the file at ``path`` (blocking: call it
    in a worker thread). A file whose headers mutagen cannot read gives empty facts; that is
    not an error, the recording is kept as it came."""
    try:
        with path.open("rb") as fh:
            return _probe(fh, fmt)
    except OSError:
        return AudioFacts()


def probe_parts(head: bytes, tail: bytes, size: int, fmt: Format) -> AudioFacts:
    """The facts of a body that is not on this machine (streamed to S3), from its first
    and last :data:`EDGE_BYTES` bytes and its size in bytes: mutagen reads the headers
    (RIFF chunks, ID3, the Xing/Info frame) and the trailing tags, never the audio."""
    return _probe(io.BufferedReader(_EdgesFile(head, tail, size)), fmt)


@dataclass(frozen=True)
class Scanned:
    """A stored object read once: its sha256 (hex), size in bytes, and first and last
    :data:`EDGE_BYTES` bytes (for :func:`sniff` and :func:`probe_parts`)."""

    sha256: str
    size: int
    head: bytes
    tail: bytes


async def scan(blocks: AsyncIterable[bytes]) -> Scanned:
    """Hash and measure an object from its blocks, keeping its edges (``recsink reindex``,
    and a pull that adopts an object already in recsink's bucket). Raises what reading
    the blocks raises."""
    digest = hashlib.sha256()
    head = bytearray()
    tail = b""
    size = 0
    async for block in blocks:
        digest.update(block)
        if len(head) < EDGE_BYTES:
            head += block[:EDGE_BYTES - len(head)]
        tail = (tail + block)[-EDGE_BYTES:]
        size += len(block)
    return Scanned(digest.hexdigest(), size, bytes(head), tail)


class _EdgesFile(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only the edges are known (zeros
    between)."""

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        self._head, self._tail, self._size, self._pos = head, tail, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        start, end = self._pos, min(self._size, self._pos + len(buffer))
        if end <= start:
            return 0
        out = bytearray(end - start)  # zeros where nothing is known
        head_end = min(end, len(self._head))
        if start < head_end:
            out[:head_end - start] = self._head[start:head_end]
        tail_start = self._size - len(self._tail)
        lo = max(start, tail_start)
        if lo < end:
            out[lo - start:] = self._tail[lo - tail_start:end - tail_start]
        buffer[:len(out)] = out
        self._pos = end
        return len(out)


def _probe(fh: IO[bytes], fmt: Format) -> AudioFacts:
    info: Any
    try:
        if fmt is Format.WAV:
            info = mutagen.wave.WAVE(fh).info
            length = float(info.length)
        elif fmt is Format.MP3:
            fh.seek(0)
            info = mutagen.mp3.MP3(fh).info
            length = _mpeg_stream_seconds(fh, info)
        else:
            return AudioFacts()
    except (mutagen.MutagenError, OSError, ValueError, ZeroDivisionError):
        return AudioFacts()
    return AudioFacts(
        duration_ms=round(length * 1000) if length >= 0 else None,
        sample_rate=info.sample_rate or None,
        channels=info.channels or None,
    )


def _mpeg_stream_seconds(fh: IO[bytes], info: Any) -> float:
    """Duration of the whole MPEG stream: every frame in the file x samples per frame.

    mutagen's ``length`` is the gapless length (LAME's encoder delay and padding removed, and
    the Xing/Info frame, which decodes to one frame of silence, left out). Call recordings are
    judged by their stream length, which is also what ffprobe reports for a CBR file, so the
    Info frame and the padding are counted. Files without a Xing/Info frame keep mutagen's
    figure (from the frame count or the bitrate).
    """
    if info.layer == 1:
        samples_per_frame = 384
    elif info.version == 1 or info.layer == 2:
        samples_per_frame = 1152
    else:
        samples_per_frame = 576
    fh.seek(info.frame_offset + XingHeader.get_offset(info))
    try:
        frames = int(XingHeader(fh).frames)
    except XingHeaderError:
        frames = -1
    if frames <= 0:
        return float(info.length)
    return float((frames + 1) * samples_per_frame / info.sample_rate)
