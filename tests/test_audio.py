"""Audio facts: ``sniff``, ``is_probe``, ``probe`` and ``Format`` (recsink/audio.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsink.audio import SNIFF_BYTES, AudioFacts, Format, is_probe, probe, sniff
from tests.conftest import FIXTURES, TESTBODY, make_wav
from tests.kazoo_wire import PROBE_CONTENT

MP3_FIXTURE = FIXTURES / "01-vm-and.mp3"


# --- Format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext", "media_type"),
    [(Format.WAV, "wav", "audio/wav"), (Format.MP3, "mp3", "audio/mpeg"),
     (Format.PROBE, "txt", "text/plain")],
)
def test_format_extension_and_media_type(fmt: Format, ext: str, media_type: str) -> None:
    """Each format's value is its file extension and it knows its media type."""
    assert fmt.value == ext
    assert str(fmt) == ext
    assert Format(ext) is fmt
    assert fmt.media_type == media_type


# --- sniff -----------------------------------------------------------------------------


def test_sniff_generated_wav() -> None:
    """A RIFF/WAVE file is WAV from its first SNIFF_BYTES."""
    assert sniff(make_wav()[:SNIFF_BYTES]) is Format.WAV


def test_sniff_minimal_riff_wave_header() -> None:
    """``RIFF<size>WAVE`` (12 bytes) is enough to be WAV."""
    assert sniff(b"RIFF\x24\x00\x00\x00WAVE") is Format.WAV


@pytest.mark.parametrize(
    "head",
    [b"RIFF\x24\x00\x00\x00AVI LIST\x00\x00\x00\x00", b"RIFF\x24\x00\x00\x00WEBPVP8 ",
     b"RIFX\x00\x00\x00\x24WAVEfmt ", b"RIFF\x24\x00\x00\x00WAV", b"RIFF", b"WAVE" * 8],
    ids=["avi", "webp", "rifx", "short", "riff-only", "wave-only"],
)
def test_sniff_riff_but_not_wave(head: bytes) -> None:
    """A RIFF container that is not WAVE (or a cut-off header) is not WAV, nor anything."""
    assert sniff(head) is None


def test_sniff_id3v2() -> None:
    """An ID3v2 tag (``ID3``, version, flags) is MP3 (the §9 TESTBODY)."""
    assert sniff(TESTBODY[:SNIFF_BYTES]) is Format.MP3
    assert sniff(b"ID3\x03\x00\x00\x00\x00\x0f\x76" + b"\x00" * 22) is Format.MP3


@pytest.mark.parametrize(
    "head",
    [b"ID3\xff\x00\x00\x00\x00\x00\x00", b"ID3\x04\xff\x00\x00\x00\x00\x00", b"ID3\x04\x00",
     b"ID3"],
    ids=["bad-major", "bad-revision", "short", "bare"],
)
def test_sniff_not_id3v2(head: bytes) -> None:
    """``ID3`` with an 0xFF version byte, or fewer than 10 bytes, is not MP3."""
    assert sniff(head) is None


def test_sniff_committed_mp3_fixture() -> None:
    """The committed fixture (bare MPEG-2.5 frame, LAME Info) is MP3."""
    assert sniff(MP3_FIXTURE.read_bytes()[:SNIFF_BYTES]) is Format.MP3


@pytest.mark.parametrize(
    "head",
    [b"\xff\xfb\x90\x64", b"\xff\xfb\x90\x64" + b"\x00" * 28, b"\xff\xf3\x48\xc4",
     b"\xff\xe3\x48\xc4", b"\xff\xfd\x90\x00", b"\xff\xff\x90\x00", b"\xff\xfa\x00\x00"],
    ids=["mpeg1-l3", "mpeg1-l3-padded", "mpeg2-l3", "mpeg25-l3", "mpeg1-l2", "mpeg1-l1",
         "free-bitrate"],
)
def test_sniff_valid_mpeg_frame_sync(head: bytes) -> None:
    """A bare MPEG audio frame header with defined version, layer, bitrate and rate is MP3."""
    assert sniff(head) is Format.MP3


@pytest.mark.parametrize(
    "head",
    [b"\xff\xe2\x0c\x00", b"\xff\xeb\x90\x00", b"\xff\xf9\x90\x00", b"\xff\xfb\xf0\x00",
     b"\xff\xff\xff\xff", b"\xff\xdb\x90\x00", b"\xfe\xfb\x90\x64", b"\xff\xfb\x90"],
    ids=["reserved-rate", "reserved-version", "reserved-layer", "bad-bitrate", "all-ones",
         "short-sync", "no-sync", "three-bytes"],
)
def test_sniff_invalid_mpeg_frame_header(head: bytes) -> None:
    """Frame-sync lookalikes with reserved or invalid fields, or cut short, are not MP3."""
    assert sniff(head) is None


@pytest.mark.parametrize(
    "head",
    [b"", b"\x00" * SNIFF_BYTES, b"hello, this is not audio at all!", b"<html><body>oops",
     b'{"error": "not audio"}', b"OggS\x00\x02" + b"\x00" * 26, b"fLaC\x00\x00\x00\x22",
     PROBE_CONTENT[:SNIFF_BYTES]],
    ids=["empty", "zeros", "text", "html", "json", "ogg", "flac", "kazoo-probe"],
)
def test_sniff_neither_wav_nor_mp3(head: bytes) -> None:
    """Empty bodies, text and other containers are neither WAV nor MP3."""
    assert sniff(head) is None


# --- is_probe --------------------------------------------------------------------------


def test_is_probe_kazoo_credentials_probe() -> None:
    """Kazoo's ``some random content: <32hex>`` probe body (§5.5) is a probe."""
    assert is_probe(PROBE_CONTENT)
    assert is_probe(PROBE_CONTENT[:SNIFF_BYTES])


@pytest.mark.parametrize(
    "head",
    [b"", b"some random", b"Some random content: c4ca", b" some random content: c4ca",
     TESTBODY[:SNIFF_BYTES], make_wav()[:SNIFF_BYTES], b"random content: c4ca"],
)
def test_is_probe_other_bodies(head: bytes) -> None:
    """Anything not starting with the exact probe prefix is not a probe."""
    assert not is_probe(head)


# --- probe -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "rate", "channels", "duration_ms"),
    [(0.5, 8000, 1, 500), (1.25, 8000, 2, 1250), (0.75, 16000, 1, 750),
     (2.0, 16000, 2, 2000)],
    ids=["8k-mono", "8k-stereo", "16k-mono", "16k-stereo"],
)
def test_probe_wav(
    tmp_path: Path, seconds: float, rate: int, channels: int, duration_ms: int
) -> None:
    """A WAV's duration, channels and sample rate are read exactly from its header."""
    path = tmp_path / "a.wav"
    path.write_bytes(make_wav(seconds, rate, channels))
    assert probe(path, Format.WAV) == AudioFacts(
        duration_ms=duration_ms, sample_rate=rate, channels=channels)


def test_probe_mp3_fixture_counts_every_frame() -> None:
    """01-vm-and.mp3 plays 936 ms (13 frames x 72 ms, LAME Info frame included), mono, 8 kHz."""
    assert MP3_FIXTURE.stat().st_size == 13 * 288  # 32 kbit/s MPEG-2.5 L3: 288-byte frames
    assert probe(MP3_FIXTURE, Format.MP3) == AudioFacts(
        duration_ms=936, sample_rate=8000, channels=1)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", Format.WAV),
        (b"", Format.MP3),
        (bytes(range(256)) * 8, Format.WAV),
        (bytes(range(256)) * 8, Format.MP3),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00", Format.WAV),
        (TESTBODY, Format.MP3),
        (PROBE_CONTENT, Format.MP3),
        (PROBE_CONTENT, Format.PROBE),
    ],
    ids=["empty-wav", "empty-mp3", "garbage-wav", "garbage-mp3", "truncated-wav-header",
         "id3-without-frames", "text-as-mp3", "probe-format"],
)
def test_probe_unreadable_gives_empty_facts(tmp_path: Path, data: bytes, fmt: Format) -> None:
    """Empty, garbage or truncated files give empty AudioFacts, never an exception."""
    path = tmp_path / "body"
    path.write_bytes(data)
    assert probe(path, fmt) == AudioFacts()


@pytest.mark.parametrize("size", [4, 10, 100])
def test_probe_mp3_truncated_inside_first_frame(tmp_path: Path, size: int) -> None:
    """An MP3 cut inside its first frame header or Info frame gives empty facts."""
    path = tmp_path / "cut.mp3"
    path.write_bytes(MP3_FIXTURE.read_bytes()[:size])
    assert probe(path, Format.MP3) == AudioFacts()


def test_probe_wrong_format_gives_empty_facts(tmp_path: Path) -> None:
    """An MP3 probed as WAV, and a WAV probed as MP3, give empty facts."""
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(MP3_FIXTURE.read_bytes())
    wav = tmp_path / "a.wav"
    wav.write_bytes(make_wav())
    assert probe(mp3, Format.WAV) == AudioFacts()
    assert probe(wav, Format.MP3) == AudioFacts()


def test_probe_missing_file_gives_empty_facts(tmp_path: Path) -> None:
    """A path that does not exist gives empty facts."""
    assert probe(tmp_path / "missing.wav", Format.WAV) == AudioFacts()
