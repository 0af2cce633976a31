"""gateway/audio.py: seconds of audio from the bytes, per format, with no external binary."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest

from gateway import audio
from tests.fakes import audio_samples


@pytest.mark.parametrize("fmt", sorted(audio_samples.BUILDERS))
@pytest.mark.parametrize("seconds", [0.96, 4.8, 61.44])
def test_duration_within_one_percent_per_format(fmt, seconds):
    # given audio of a known length built with real headers
    data = audio_samples.BUILDERS[fmt](seconds)
    # when
    measured = audio.measure(data, fmt)
    # then
    assert not measured.estimated
    assert abs(measured.seconds - Decimal(str(seconds))) <= Decimal(str(seconds)) / 100


def test_mp3_exact_frame_walk_skips_id3v2_and_ignores_id3v1():
    data = audio_samples.mp3(3.0, id3=True) + b"TAG" + b"\x00" * 125
    assert audio.measure(data, "mp3") == audio.Duration(Decimal("3.000"), False, "mp3")


def test_mp3_xing_header_is_trusted_over_the_frames_present():
    # a VBR file's Xing header says 500 frames of 1152 samples at 48 kHz = 12 s
    data = audio_samples.mp3(0.24, xing_frames=500)
    assert audio.measure(data, "mp3").seconds == Decimal("12.000")


def test_mp3_resynchronizes_over_junk_and_counts_a_cut_last_frame():
    frames = audio_samples.mp3(0.96)  # 40 frames of 384 bytes
    data = frames[:384 * 20] + b"\x00junk\x00" + frames[384 * 20:-192]
    assert audio.measure(data, "mp3").seconds == Decimal("0.948")  # 39.5 frames


def test_streamed_wav_with_unknown_data_size_uses_the_bytes_present():
    data = bytearray(audio_samples.wav(2.0))
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFFF)  # what a streaming encoder writes
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    assert audio.measure(bytes(data), "wav").seconds == Decimal("2.000")


def test_wav_extra_chunks_before_data_are_skipped():
    data = audio_samples.wav(1.5)
    fmt_end = 12 + 8 + 16
    data = data[:fmt_end] + b"LIST" + struct.pack("<I", 5) + b"abcde\x00" + data[fmt_end:]
    assert audio.measure(data, "wav").seconds == Decimal("1.500")


def test_opus_subtracts_pre_skip():
    assert audio.measure(audio_samples.opus(2.0, pre_skip=3840), "opus").seconds == Decimal("2.000")


def test_pcm_is_24khz_16bit_mono():
    assert audio.measure(b"\x00" * 48_000, "pcm").seconds == Decimal("1.000")


@pytest.mark.parametrize("seconds", [0.1, 3.3, 61.44])
def test_streamed_flac_is_measured_from_its_last_frame_header(seconds):
    # given FLAC as a streaming encoder writes it: STREAMINFO's total samples is 0
    data = audio_samples.flac(seconds, streamed=True)
    # when / then the last frame's number (CRC-8 checked) and block size give the length
    measured = audio.measure(data, "flac")
    assert not measured.estimated and measured.seconds == Decimal(str(seconds)).quantize(Decimal("0.001"))


def test_flac_false_sync_in_the_tail_is_skipped():
    # a 0xFFF8 inside the last frame's body fails the CRC-8 and is not taken for a header
    data = audio_samples.flac(2.0, streamed=True) + b"\xff\xf8\xc7\x08\x7f\x00"
    assert audio.measure(data, "flac").seconds == Decimal("2.000")


def test_flac_without_total_samples_or_frames_is_estimated():
    data = audio_samples.flac(2.0, streamed=True)
    header_end = 8 + 34
    measured = audio.measure(data[:header_end] + b"\x00" * 1000, "flac")
    assert measured.estimated


def test_mp4_duration_from_mvhd():
    assert audio.measure(audio_samples.mp4(12.25), "mp4").seconds == Decimal("12.250")


def test_garbage_is_estimated_from_bytes_and_nominal_bitrate():
    measured = audio.measure(b"\x00" * 16_000, "mp3")
    assert measured == audio.Duration(Decimal("1.000"), True, "mp3")  # 128 kbit/s


@pytest.mark.parametrize("fmt,expected", [
    ("mp3", "mp3"), ("wav", "wav"), ("aac", "aac"), ("flac", "flac"), ("opus", "ogg"), ("pcm", None),
])
def test_sniff_by_magic_bytes(fmt, expected):
    assert audio.sniff(audio_samples.BUILDERS[fmt](1.0)) == expected


def test_sniff_mp4_webm_and_id3():
    assert audio.sniff(audio_samples.mp4(1.0)) == "mp4"
    assert audio.sniff(b"\x1a\x45\xdf\xa3" + b"\x00" * 20) == "webm"
    assert audio.sniff(audio_samples.mp3(1.0, id3=True)) == "mp3"
    assert audio.sniff(b"hello world, not audio") is None


def test_webm_duration_element():
    # EBML header, then Info with TimecodeScale 1,000,000 ns and Duration 2500.0 ticks (float64)
    data = (b"\x1a\x45\xdf\xa3\x80" + b"\x15\x49\xa9\x66\x90" + b"\x2a\xd7\xb1\x83\x0f\x42\x40"
            + b"\x44\x89\x88" + struct.pack(">d", 2500.0))
    assert audio.measure(data, "webm").seconds == Decimal("2.500")
