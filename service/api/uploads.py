"""Streaming multipart reader that enforces the upload caps while the body arrives.

FastAPI's `UploadFile` would spool the whole body to disk before the route could look at it, so
a 5 GB upload would be received in full just to be refused. This reader parses the stream itself
(python-multipart, the parser Starlette uses) and stops at the first byte over a file's cap or at
the first file over the per-request count. A Content-Length that cannot fit is refused before any
byte is read. A body that ends before its closing boundary (cut off in transit) is refused as
broken, even when its first parts were whole, so a partial upload is never taken for a complete
one.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api.body_cap import use_own_body_caps
from service.api.problems import ProblemError
from service.api.schemas import CONTROL_CHARACTER
from service.intake import megabytes

MAX_FIELD_BYTES = 1024
MAX_FIELDS = 8
MAX_FILENAME_LENGTH = 255
# Form fields hold ids: no control character belongs in one (and PostgreSQL refuses NUL).
# Dropped from filenames: control and format characters (bidi overrides make `gpj.exe` look
# like `exe.jpg`) and line or paragraph separators.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}
# Multipart framing per part (boundary, headers) is well under this.
_PART_OVERHEAD = 2048


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    data: bytes


@dataclass
class MultipartBody:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def clean_filename(raw: str) -> str | None:
    """A client's filename as it is stored and shown: its last path component (some clients send
    a whole path), without unprintable characters, at most MAX_FILENAME_LENGTH characters with
    its extension kept; None if nothing is left."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if unicodedata.category(char) not in _UNPRINTABLE)
    name = name.strip()
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) < 16:
            name = stem[: MAX_FILENAME_LENGTH - len(extension) - 1] + dot + extension
        else:
            name = name[:MAX_FILENAME_LENGTH]
    return name or None


class PhotoTooLarge(ProblemError):
    """A 413 for a file over the byte cap (or a body no upload within the caps could be), raised
    before intake sees the photo, so a route can add the buyer's finding for it."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, "upload_too_large", "Upload too large", detail)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _too_many(max_files: int) -> ProblemError:
    return ProblemError(
        413,
        "too_many_files",
        "Too many files",
        f"At most {_plural(max_files, 'file')} may be uploaded per request.",
    )


class _Collector:
    """python-multipart callbacks that build the body and enforce the caps as parts stream."""

    def __init__(self, *, file_field: str, max_files: int, max_file_bytes: int) -> None:
        self.file_field = file_field
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.body = MultipartBody()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        # Set by the closing boundary: python-multipart's finalize() accepts a body cut short.
        self.complete = False

    def on_part_begin(self) -> None:
        self._headers = {}
        self._buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise ProblemError(
                400, "malformed_multipart", "Malformed upload", "A part has no form-data name."
            )
        self._name = options[b"name"].decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self._filename = (
            clean_filename(raw_filename.decode("utf-8", "replace")) if raw_filename else None
        )
        self._is_file = raw_filename is not None
        if self._is_file:
            if self._name != self.file_field:
                raise ProblemError(
                    422,
                    "unexpected_file_field",
                    "Unexpected file field",
                    f"Files must be sent in the multipart field {self.file_field!r}, "
                    f"not {self._name!r}.",
                )
            if len(self.body.files) >= self.max_files:
                raise _too_many(self.max_files)
        elif len(self.body.fields) >= MAX_FIELDS:
            raise ProblemError(
                413, "too_many_fields", "Too many form fields", "The form has too many fields."
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._buffer += data[start:end]
        limit = self.max_file_bytes if self._is_file else MAX_FIELD_BYTES
        if len(self._buffer) > limit:
            if self._is_file:
                raise PhotoTooLarge(
                    f"{self._filename or 'A file'} is larger than the "
                    f"{megabytes(self.max_file_bytes)} limit per photo."
                )
            raise ProblemError(
                413,
                "upload_too_large",
                "Upload too large",
                f"The form field {self._name!r} is too long.",
            )

    def on_part_end(self) -> None:
        if self._is_file:
            self.body.files.append(UploadedFile(self._name, self._filename, bytes(self._buffer)))
        else:
            value = self._buffer.decode("utf-8", "replace")
            if CONTROL_CHARACTER.search(value):
                raise ProblemError(
                    422,
                    "invalid_form_field",
                    "Invalid form field",
                    f"The form field {self._name!r} holds a control character.",
                )
            self.body.fields[self._name] = value

    def on_end(self) -> None:
        self.complete = True

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }


async def read_multipart(
    request: Request, *, file_field: str, max_files: int, max_file_bytes: int
) -> MultipartBody:
    """The files and short fields of a multipart/form-data request, within the caps."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ProblemError(
            415,
            "multipart_required",
            "multipart/form-data required",
            f"Send the photos as multipart/form-data in the field {file_field!r}.",
        )
    ceiling = max_files * (max_file_bytes + _PART_OVERHEAD) + MAX_FIELDS * (
        MAX_FIELD_BYTES + _PART_OVERHEAD
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > ceiling:
        raise PhotoTooLarge(
            f"The request declares {megabytes(int(declared))}; at most "
            f"{_plural(max_files, 'photo')} of {megabytes(max_file_bytes)} each "
            f"{'are' if max_files != 1 else 'is'} accepted."
        )
    collector = _Collector(
        file_field=file_field, max_files=max_files, max_file_bytes=max_file_bytes
    )
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    use_own_body_caps(request)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > ceiling:
                raise PhotoTooLarge("The request body is larger than any accepted upload.")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise ProblemError(
            400, "malformed_multipart", "Malformed upload", f"The multipart body is broken: {error}"
        ) from None
    if not collector.complete:
        raise ProblemError(
            400,
            "malformed_multipart",
            "Malformed upload",
            "The multipart body ends before its closing boundary: the upload was cut off. "
            "Send it again.",
        )
    if not collector.body.files:
        raise ProblemError(
            422,
            "no_files",
            "No files",
            f"Attach at least one photo in the multipart field {file_field!r}.",
        )
    return collector.body
