"""X-TokenBill-Run-Id is read as the same text metadata.run_id would carry."""

from __future__ import annotations

import pytest

from gateway.app import Request, _metadata_run_id


def _run_id(raw: bytes) -> str:
    scope = {"method": "POST", "headers": [(b"content-type", b"application/json"), (b"x-tokenbill-run-id", raw)]}
    return Request(scope, "ve_x", "/v1/chat/completions").run_id


@pytest.mark.parametrize("run_id", ["r1", "über-1", "エージェント/7", "agent run #1/step?x=1"])
def test_a_utf8_header_gives_the_same_run_id_as_metadata(run_id):
    assert _run_id(run_id.encode("utf-8")) == _metadata_run_id({"metadata": {"run_id": run_id}}) == run_id


def test_bytes_that_are_not_utf8_are_read_as_latin1():
    assert _run_id(b"\xfcber") == "über"


def test_the_header_is_cut_at_200_characters_like_metadata():
    assert _run_id(("é" * 300).encode("utf-8")) == "é" * 200
