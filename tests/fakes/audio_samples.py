"""Audio bytes of a known duration, built in the test (no binaries downloaded).

Each builder writes real container/frame headers with silent or constant payloads, so the
bytes parse as the format says (a decoder would play silence/noise of the right length):

    wav    the stdlib `wave` module, 24 kHz 16-bit mono
    pcm    raw 24 kHz 16-bit mono (what OpenAI's response_format=pcm sends)
    mp3    MPEG-1 Layer III frames, 48 kHz, 128 kbit/s CBR (384 bytes, 1152 samples = 24 ms each);
           optionally an ID3v2 tag in front and a Xing header frame (VBR files)
    aac    ADTS frames (AAC LC, 16 kHz mono), 1024 samples = 64 ms each
    flac   fLaC + STREAMINFO (total samples, or 0: streamed) + frame headers with CRC-8, placeholder bodies
    opus   Ogg pages (CRC-32 as the spec says): OpusHead (pre-skip 312), OpusTags, then audio
           pages of 20 ms packets whose granule positions count 48 kHz samples
Durations land on whole frames: ask for a multiple of the frame length for an exact file.
"""

from __future__ import annotations

import io
import struct
import wave


def wav(seconds: float, rate: int = 24_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(round(seconds * rate)))
    return out.getvalue()


def pcm(seconds: float) -> bytes:
    return b"\x01\x00" * int(round(seconds * 24_000))


def _mp3_frame(payload_byte: int = 0) -> bytes:
    # FF FB: sync, MPEG-1, Layer III, no CRC. 0x94: 128 kbit/s (index 9), 48 kHz (index 1), no padding.
    # 0x44: joint stereo. Length 144 x 128000 / 48000 = 384 bytes.
    return b"\xff\xfb\x94\x44" + bytes([payload_byte]) * 380


def mp3(seconds: float, *, id3: bool = False, xing_frames: int | None = None) -> bytes:
    frames = int(round(seconds * 48_000 / 1152))
    out = bytearray()
    if id3:
        body = b"TIT2\x00\x00\x00\x05\x00\x00\x03test"
        size = len(body)
        out += b"ID3\x04\x00\x00" + bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
        out += body
    if xing_frames is not None:
        info = bytearray(_mp3_frame())
        at = 4 + 32  # MPEG-1 stereo side info
        info[at:at + 12] = b"Xing" + struct.pack(">II", 1, xing_frames)
        out += info
    out += _mp3_frame() * frames
    return bytes(out)


def aac(seconds: float, rate_index: int = 8, rate: int = 16_000) -> bytes:
    frames = int(round(seconds * rate / 1024))
    payload = b"\x21\x00\x49\x90\x02\x19\x00\x23\x80" + b"\x00" * 91
    length = 7 + len(payload)
    header = bytes([
        0xFF, 0xF1,  # sync, MPEG-4, layer 0, no CRC
        (1 << 6) | (rate_index << 2) | 0,  # AAC LC, sampling index, private 0, channel config high bit 0
        (1 << 6) | (length >> 11),  # channel config 1 (mono)
        (length >> 3) & 0xFF,
        ((length & 0x7) << 5) | 0x1F,  # buffer fullness 0x7FF (VBR)
        0xFC,  # buffer fullness low bits, one raw data block
    ])
    return (header + payload) * frames


def flac(seconds: float, rate: int = 24_000, *, streamed: bool = False) -> bytes:
    """fLaC, STREAMINFO (total samples, or 0 as a streaming encoder writes it), then frames
    of 4096 samples (the last one shorter) with real headers: sync, block size and rate
    codes, UTF-8 frame number, CRC-8; each followed by a placeholder body."""
    total = int(round(seconds * rate))
    packed = (rate << 44) | (0 << 41) | (15 << 36) | (0 if streamed else total)  # rate 20 | ch-1 3 | bps-1 5 | total 36
    info = struct.pack(">HH", 4096, 4096) + b"\x00" * 6 + packed.to_bytes(8, "big") + b"\x00" * 16
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    frames, last = divmod(total, 4096)
    for number in range(frames + (1 if last else 0)):
        out += _flac_frame(number, 4096 if number < frames else last)
    return bytes(out)


def _flac_frame(number: int, block: int) -> bytes:
    rate_code = 0x07  # 24 kHz
    if block == 4096:
        header = bytes([0xFF, 0xF8, 0xC0 | rate_code, 0x08]) + _utf8(number)
    else:  # block size code 7: a 16-bit (size - 1) follows the frame number
        header = bytes([0xFF, 0xF8, 0x70 | rate_code, 0x08]) + _utf8(number) + struct.pack(">H", block - 1)
    header += bytes([_crc8(header)])
    return header + b"\x00" * 48  # placeholder subframe bytes (not decodable audio)


def _utf8(value: int) -> bytes:
    return chr(value).encode("utf-8") if value < 0x110000 else b""


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# --- ogg / opus ----------------------------------------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]) & 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, granule: int, seq: int, flags: int = 0, serial: int = 0x5EED) -> bytes:
    lacing = bytearray()
    for packet in packets:
        n = len(packet)
        lacing += b"\xff" * (n // 255) + bytes([n % 255])
    header = b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, serial, seq, 0) + bytes([len(lacing)])
    page = bytearray(header + lacing + b"".join(packets))
    page[22:26] = struct.pack("<I", _ogg_crc(bytes(page)))
    return bytes(page)


def opus(seconds: float, pre_skip: int = 312) -> bytes:
    packets = int(round(seconds / 0.02))
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", pre_skip, 24_000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 9) + b"tokenbill" + struct.pack("<I", 0)
    pages = [_ogg_page([head], granule=0, seq=0, flags=0x02), _ogg_page([tags], granule=0, seq=1)]
    packet = b"\xf8" + b"\x00" * 40  # TOC: CELT fullband 20 ms, one frame
    done, seq = 0, 2
    while done < packets:
        batch = min(50, packets - done)
        done += batch
        last = done == packets
        pages.append(_ogg_page([packet] * batch, granule=pre_skip + done * 960, seq=seq, flags=0x04 if last else 0))
        seq += 1
    return b"".join(pages)


def mp4(seconds: float, timescale: int = 44_100) -> bytes:
    """An MP4/M4A skeleton: ftyp + moov/mvhd (version 0) + an empty mdat."""
    ftyp = _box(b"ftyp", b"M4A \x00\x00\x02\x00isomM4A ")
    mvhd = _box(b"mvhd", b"\x00\x00\x00\x00" + struct.pack(">IIII", 0, 0, timescale, int(round(seconds * timescale)))
                + b"\x00" * 80)
    return ftyp + _box(b"moov", mvhd) + _box(b"mdat", b"\x00" * 128)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


BUILDERS = {"mp3": mp3, "wav": wav, "pcm": pcm, "aac": aac, "flac": flac, "opus": opus}
