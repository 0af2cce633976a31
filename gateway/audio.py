"""Seconds of audio, read from the bytes themselves: pure Python, no external binaries.

    measure(data, fmt) -> Duration(seconds, estimated, format)

Per format (the `response_format` of /v1/audio/speech, or the sniffed type of an upload):

    mp3   Xing/Info or VBRI header (frames x samples per frame / rate) where present,
          else a walk over every frame header (ID3v2 skipped, ID3v1 ignored)
    wav   RIFF fmt + data chunk (a streamed data size of 0 or 0xFFFFFFFF: the bytes present)
    opus/ogg  granule position of the last Ogg page (opus: 48 kHz minus pre-skip; vorbis: its rate)
    aac   ADTS frames x 1024 samples (x raw blocks) / rate
    flac  STREAMINFO total samples / rate; when 0 (streamed), the last frame header's number
    pcm   raw 24 kHz 16-bit mono, as OpenAI sends it
    mp4/m4a  mvhd duration / timescale;  webm  Segment Info Duration x TimecodeScale

When the format cannot be parsed the duration is byte length / a nominal bitrate of the
format, with estimated=True (the request log shows usage_estimated). Seconds are Decimal,
rounded half-up to the millisecond.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

MS = Decimal("0.001")
PCM_RATE, PCM_BYTES_PER_SAMPLE = 24_000, 2
# Nominal bitrates (bits per second) for the byte-length estimate when a format does not parse.
NOMINAL_BITRATE = {"mp3": 128_000, "opus": 32_000, "ogg": 64_000, "aac": 96_000, "flac": 384_000,
                   "wav": 384_000, "pcm": 384_000, "mp4": 128_000, "webm": 64_000}
SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})


@dataclass(frozen=True, slots=True)
class Duration:
    seconds: Decimal
    estimated: bool
    format: str


class Unparseable(ValueError):
    pass


def _seconds(samples: int | Decimal, rate: int | Decimal) -> Decimal:
    return (Decimal(samples) / Decimal(rate)).quantize(MS, rounding=ROUND_HALF_UP)


def measure(data: bytes, fmt: str) -> Duration:
    """Duration of `data` in format `fmt`; falls back to an estimate, never raises."""
    parser = PARSERS.get(fmt)
    if parser is not None:
        try:
            return Duration(parser(data), False, fmt)
        except (Unparseable, struct.error, IndexError, ZeroDivisionError):
            pass
    return estimate(len(data), fmt)


def estimate(length: int, fmt: str) -> Duration:
    bitrate = NOMINAL_BITRATE.get(fmt, 128_000)
    return Duration(_seconds(length * 8, bitrate), True, fmt)


def sniff(data: bytes) -> str | None:
    """The container/codec of an upload from its first bytes (the file name is not trusted)."""
    head = data[:12]
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: sync 0xFFF, layer 00
    if len(head) >= 4 and _mp3_header(head, 0) is not None:
        return "mp3"
    return None


# --- mp3 -----------------------------------------------------------------------------------------
_MP3_BITRATES = {  # kbit/s by (version is MPEG-1, layer) for index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class _Mp3Frame:
    length: int
    samples: int
    rate: int
    mpeg1: bool
    mono: bool


def _mp3_header(data: bytes, i: int) -> _Mp3Frame | None:
    if i + 4 > len(data) or data[i] != 0xFF or data[i + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[i + 1], data[i + 2], data[i + 3]
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _MP3_BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    else:
        samples = 1152 if (layer == 2 or mpeg1) else 576
        length = samples // 8 * bitrate // rate + padding
    return _Mp3Frame(length, samples, rate, mpeg1, (b3 >> 6) == 3)


def _skip_id3v2(data: bytes) -> int:
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _first_mp3_frame(data: bytes, start: int) -> int:
    """Offset of the first frame whose successor also starts where it says (no false sync)."""
    i = data.find(b"\xff", start)
    while 0 <= i < len(data) - 3:
        frame = _mp3_header(data, i)
        if frame and (i + frame.length >= len(data) or _mp3_header(data, i + frame.length)):
            return i
        i = data.find(b"\xff", i + 1)
    raise Unparseable("no mp3 frame")


def _xing_frames(data: bytes, i: int, frame: _Mp3Frame) -> int | None:
    side = (32 if not frame.mono else 17) if frame.mpeg1 else (17 if not frame.mono else 9)
    at = i + 4 + side
    if data[at:at + 4] in (b"Xing", b"Info"):
        flags = struct.unpack(">I", data[at + 4:at + 8])[0]
        if flags & 1:
            return struct.unpack(">I", data[at + 8:at + 12])[0]
    if data[i + 36:i + 40] == b"VBRI":
        return struct.unpack(">I", data[i + 50:i + 54])[0]
    return None


def mp3_seconds(data: bytes) -> Decimal:
    i = _first_mp3_frame(data, _skip_id3v2(data))
    first = _mp3_header(data, i)
    counted = _xing_frames(data, i, first)
    if counted is not None:  # the info frame itself carries no audio and is not counted
        return _seconds(counted * first.samples, first.rate)
    samples, end = 0, len(data)
    while i < end - 3:
        frame = _mp3_header(data, i)
        if frame is None:
            if data[i:i + 3] == b"TAG":
                break
            i = data.find(b"\xff", i + 1)  # junk between frames: resynchronize
            if i < 0:
                break
            continue
        if i + frame.length > end:  # a cut final frame: count the part that arrived
            samples += frame.samples * (end - i) // frame.length
            break
        samples += frame.samples
        i += frame.length
    if not samples:
        raise Unparseable("no mp3 frames")
    return _seconds(samples, first.rate)


# --- wav / pcm -----------------------------------------------------------------------------------
def wav_seconds(data: bytes) -> Decimal:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise Unparseable("not RIFF/WAVE")
    i, byte_rate = 12, 0
    while i + 8 <= len(data):
        cid, size = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        if cid == b"fmt ":
            byte_rate = struct.unpack("<I", data[i + 16:i + 20])[0]
        elif cid == b"data":
            if not byte_rate:
                raise Unparseable("data before fmt")
            present = len(data) - (i + 8)
            length = present if size in (0, 0xFFFFFFFF) or size > present else size
            return _seconds(length, byte_rate)
        i += 8 + size + (size & 1)
    raise Unparseable("no data chunk")


def pcm_seconds(data: bytes) -> Decimal:
    return _seconds(len(data), PCM_RATE * PCM_BYTES_PER_SAMPLE)


# --- ogg (opus, vorbis) --------------------------------------------------------------------------
def _ogg_rate_and_skip(data: bytes) -> tuple[int, int]:
    head = data.find(b"OpusHead", 0, 4096)
    if head >= 0:
        return 48_000, struct.unpack("<H", data[head + 10:head + 12])[0]
    head = data.find(b"\x01vorbis", 0, 4096)
    if head >= 0:
        return struct.unpack("<I", data[head + 12:head + 16])[0], 0
    head = data.find(b"\x7fFLAC", 0, 4096)
    if head >= 0:
        return (data[head + 27] << 12 | data[head + 28] << 4 | data[head + 29] >> 4), 0
    raise Unparseable("unknown ogg codec")


def ogg_seconds(data: bytes) -> Decimal:
    if data[:4] != b"OggS":
        raise Unparseable("not ogg")
    rate, pre_skip = _ogg_rate_and_skip(data)
    i = data.rfind(b"OggS")
    while i >= 0:
        granule = struct.unpack("<q", data[i + 6:i + 14])[0] if i + 14 <= len(data) else -1
        if granule >= 0 and data[i + 4] == 0:
            return _seconds(max(granule - pre_skip, 0), rate)
        i = data.rfind(b"OggS", 0, i)
    raise Unparseable("no ogg page with a granule position")


# --- aac (ADTS) ----------------------------------------------------------------------------------
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def aac_seconds(data: bytes) -> Decimal:
    i = _skip_id3v2(data)
    samples, rate, end = 0, 0, len(data)
    while i + 7 <= end:
        if data[i] != 0xFF or data[i + 1] & 0xF6 != 0xF0:
            i = data.find(b"\xff", i + 1)
            if i < 0:
                break
            continue
        rate_index = (data[i + 2] >> 2) & 0x0F
        length = ((data[i + 3] & 0x03) << 11) | (data[i + 4] << 3) | (data[i + 5] >> 5)
        if rate_index >= len(_AAC_RATES) or length < 7:
            i += 1
            continue
        rate = rate or _AAC_RATES[rate_index]
        blocks = (data[i + 6] & 0x03) + 1
        if i + length > end:
            samples += 1024 * blocks * (end - i) // length
            break
        samples += 1024 * blocks
        i += length
    if not samples:
        raise Unparseable("no ADTS frames")
    return _seconds(samples, rate)


# --- flac ----------------------------------------------------------------------------------------
def flac_seconds(data: bytes) -> Decimal:
    """STREAMINFO's total samples; a streamed encoder leaves it 0 (unknown when the header
    went out), then the last frame header's frame/sample number says how far the audio got."""
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise Unparseable("no STREAMINFO")
    info = data[8:8 + 34]
    rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
    total = ((info[13] & 0x0F) << 32) | struct.unpack(">I", info[14:18])[0]
    if not rate:
        raise Unparseable("STREAMINFO without a sample rate")
    if not total:
        total = _flac_samples_from_last_frame(data, struct.unpack(">H", info[2:4])[0])
    return _seconds(total, rate)


def _flac_samples_from_last_frame(data: bytes, max_block: int) -> int:
    i = data.rfind(b"\xff", 0, len(data) - 1)
    while i > 4:
        header = _flac_frame_header(data, i)
        if header is not None:
            variable, number, block = header
            return number + block if variable else number * max_block + block
        i = data.rfind(b"\xff", 0, i)
    raise Unparseable("no FLAC frame header")


def _flac_frame_header(data: bytes, i: int) -> tuple[bool, int, int] | None:
    """(variable blocksize, frame or sample number, block size) of a frame header at i whose
    CRC-8 checks (a false sync inside audio data fails it)."""
    if i + 6 > len(data) or data[i + 1] & 0xFE != 0xF8 or data[i + 3] & 1:
        return None
    block_code, rate_code = data[i + 2] >> 4, data[i + 2] & 0x0F
    if block_code == 0 or rate_code == 15:
        return None
    at, number = _flac_utf8(data, i + 4)
    if number is None:
        return None
    if block_code == 6:
        block, at = data[at] + 1, at + 1
    elif block_code == 7:
        block, at = struct.unpack(">H", data[at:at + 2])[0] + 1, at + 2
    elif block_code == 1:
        block = 192
    elif block_code <= 5:
        block = 576 << (block_code - 2)
    else:
        block = 256 << (block_code - 8)
    at += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if at >= len(data) or _crc8(data[i:at]) != data[at]:
        return None
    return bool(data[i + 1] & 1), number, block


def _flac_utf8(data: bytes, at: int) -> tuple[int, int | None]:
    first = data[at]
    if first < 0x80:
        return at + 1, first
    # n continuation bytes: the first byte starts with n + 1 ones and a zero (110xxxxx, 1110xxxx, ...)
    extra = next((n for n in range(1, 7) if first >> (6 - n) == (1 << (n + 2)) - 2), None)
    if extra is None or at + 1 + extra > len(data):
        return at + 1, None
    value = first & (0x3F >> extra)
    for byte in data[at + 1:at + 1 + extra]:
        if byte & 0xC0 != 0x80:
            return at + 1, None
        value = (value << 6) | (byte & 0x3F)
    return at + 1 + extra, value


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# --- mp4 / webm (uploads) ------------------------------------------------------------------------
def _mp4_box(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    i = start
    while i + 8 <= end:
        size, name = struct.unpack(">I", data[i:i + 4])[0], data[i + 4:i + 8]
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        if size < header:
            return None
        if name == kind:
            return i + header, min(i + size, end)
        i += size
    return None


def mp4_seconds(data: bytes) -> Decimal:
    moov = _mp4_box(data, 0, len(data), b"moov")
    mvhd = moov and _mp4_box(data, moov[0], moov[1], b"mvhd")
    if not mvhd:
        raise Unparseable("no mvhd")
    at = mvhd[0]
    if data[at] == 1:
        scale, duration = struct.unpack(">IQ", data[at + 20:at + 32])
    else:
        scale, duration = struct.unpack(">II", data[at + 12:at + 20])
    return _seconds(duration, scale)


def webm_seconds(data: bytes) -> Decimal:
    scale = Decimal(1_000_000)  # TimecodeScale default: 1 ms per tick, in ns
    at = data.find(b"\x2a\xd7\xb1")
    if at >= 0:
        width = data[at + 3] & 0x0F if data[at + 3] & 0x80 else 0
        if width:
            scale = Decimal(int.from_bytes(data[at + 4:at + 4 + width], "big"))
    at = data.find(b"\x44\x89")
    while at >= 0:
        if data[at + 2] == 0x88:
            ticks = struct.unpack(">d", data[at + 3:at + 11])[0]
            break
        if data[at + 2] == 0x84:
            ticks = struct.unpack(">f", data[at + 3:at + 7])[0]
            break
        at = data.find(b"\x44\x89", at + 1)
    else:
        raise Unparseable("no Duration element")
    return (Decimal(repr(ticks)) * scale / Decimal(1_000_000_000)).quantize(MS, rounding=ROUND_HALF_UP)


PARSERS = {
    "mp3": mp3_seconds, "wav": wav_seconds, "pcm": pcm_seconds, "opus": ogg_seconds, "ogg": ogg_seconds,
    "aac": aac_seconds, "flac": flac_seconds, "mp4": mp4_seconds, "webm": webm_seconds,
}
