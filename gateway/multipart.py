"""multipart/form-data in and out, for audio uploads: a small strict parser and an encoder.

No python-multipart in the environment, and the stdlib email parser copies and re-decodes
the whole body; the body is already in memory (read under the upload limit by
gateway/media.py), so parsing is a split on the boundary with limits on the part count
and on the size of plain fields. Anything malformed is a MultipartError (-> 400).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MAX_PARTS = 64
MAX_FIELD_BYTES = 64 * 1024  # a non-file field (prompt, language, ...) larger than this is refused
_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.I)
_PARAM = re.compile(r';\s*([a-zA-Z*]+)="((?:[^"\\]|\\.)*)"|;\s*([a-zA-Z*]+)=([^;\s]+)')


class MultipartError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class UploadedFile:
    name: str  # the form field
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Form:
    fields: list[tuple[str, str]]  # in order; a name may repeat (timestamp_granularities[])
    files: dict[str, UploadedFile]

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)


def boundary_of(content_type: str) -> str:
    if not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError("The request must be multipart/form-data.")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise MultipartError("The multipart body has no boundary.")
    return match.group(1)


def parse(body: bytes, content_type: str) -> Form:
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise MultipartError("The multipart body is truncated or malformed.")
    if len(chunks) - 2 > MAX_PARTS:
        raise MultipartError(f"The multipart body has more than {MAX_PARTS} parts.")
    form = Form([], {})
    for chunk in chunks[1:-1]:
        _add_part(form, chunk)
    return form


def _add_part(form: Form, chunk: bytes) -> None:
    if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
        raise MultipartError("A multipart part is malformed.")
    head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
    if not sep:
        raise MultipartError("A multipart part has no header end.")
    headers = _headers(head)
    params = _params(headers.get("content-disposition", ""))
    name = params.get("name")
    if not name:
        raise MultipartError("A multipart part has no name.")
    if "filename" in params:
        form.files[name] = UploadedFile(name, os.path.basename(params["filename"].replace("\\", "/")),
                                        headers.get("content-type", "application/octet-stream"), data)
        return
    if len(data) > MAX_FIELD_BYTES:
        raise MultipartError(f"The form field '{name}' is too large.")
    try:
        form.fields.append((name, data.decode("utf-8")))
    except UnicodeDecodeError:
        raise MultipartError(f"The form field '{name}' is not UTF-8.") from None


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError("A multipart part header is malformed.")
        headers[name.strip().lower()] = value.strip()
    return headers


def _params(disposition: str) -> dict[str, str]:
    if not disposition.lower().startswith("form-data"):
        raise MultipartError("A multipart part is not form-data.")
    params = {}
    for quoted_key, quoted, bare_key, bare in _PARAM.findall(disposition):
        key = (quoted_key or bare_key).lower()
        params[key] = quoted.replace('\\"', '"') if quoted_key else bare
    return params


def encode(fields: list[tuple[str, str]], files: list[UploadedFile]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request with these fields and files."""
    boundary = "tokenbill-" + os.urandom(12).hex()
    out = []
    for name, value in fields:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode())
        out.append(value.encode() + b"\r\n")
    for f in files:
        out.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(f.name)}"; '
                    f'filename="{_quote(f.filename)}"\r\nContent-Type: {f.content_type}\r\n\r\n').encode())
        out.append(f.data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
