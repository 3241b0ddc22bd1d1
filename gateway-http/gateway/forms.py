"""A multipart/form-data upload read as it arrives: its small fields, then its file's bytes
handed on while the body streams in, never spooled, and refused once over a size limit."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from gateway.bodies import bounded_stream
from gateway.errors import BadRequest, TooLarge

if TYPE_CHECKING:
    # Defined for type checkers only.
    from python_multipart.multipart import MultipartCallbacks

# What a body may carry besides the file: boundaries, part headers and the small fields.
FORM_OVERHEAD = 64 * 1024


@dataclass
class Part:
    """One part's name and headers; `filename` is None for a plain field."""

    name: str
    filename: str | None
    content_type: str


@dataclass
class _Parsed:
    """What the parser reported for one fed chunk, in order: a part's start, its bytes, its end."""

    events: deque[Part | bytes | None] = field(default_factory=deque)
    ended: bool = False


class UploadForm:
    """A form whose `file_field` part is streamed: fields() reads up to that part, file() its
    bytes and then the rest of the body."""

    def __init__(
        self,
        request: Request,
        *,
        file_field: str,
        fields: set[str],
        max_file: int,
        body_timeout: float,
    ):
        self._request = request
        self._file_field = file_field
        self._fields = fields
        self._max_file = max_file
        # Seconds the body may leave the form waiting for its next bytes (BodyTimeout).
        self._body_timeout = body_timeout
        self._refusal = f"upload is over the limit of {max_file} bytes"
        self._events = self._parse()
        self._file: AsyncGenerator[bytes, None] | None = None

    async def fields(self) -> tuple[dict[str, str], Part]:
        """The known fields sent before the file part (the last value of each), and that part."""
        values: dict[str, str] = {}
        async for event in self._events:
            # Between parts python-multipart reports only a part's start.
            assert isinstance(event, Part)
            if event.name == self._file_field:
                return values, event
            text = _text(await self._field_value())
            if event.name in self._fields:
                values[event.name] = text
        raise BadRequest(f"{self._file_field}: Field required")

    def file(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive (TooLarge past max_file); then the rest of the body,
        which may not repeat the file or bring a known field it would come too late for."""
        self._file = self._file_bytes()
        return self._file

    async def aclose(self) -> None:
        """Stop reading; the route calls it however the upload ended."""
        if self._file is not None:
            await self._file.aclose()
        await self._events.aclose()

    async def _file_bytes(self) -> AsyncGenerator[bytes, None]:
        size = 0
        async for event in self._events:
            if event is None:
                break
            assert not isinstance(event, Part)
            size += len(event)
            if size > self._max_file:
                raise TooLarge(self._refusal)
            yield event
        async for event in self._events:
            if isinstance(event, Part) and (
                event.name == self._file_field or event.name in self._fields
            ):
                raise BadRequest(
                    f"{event.name}: must come before the {self._file_field} part, once"
                )

    async def _field_value(self) -> bytes:
        value = bytearray()
        async for event in self._events:
            if event is None:
                return bytes(value)
            assert not isinstance(event, Part)
            value += event
        raise BadRequest("multipart: the body ended inside a part")

    async def _parse(self) -> AsyncGenerator[Part | bytes | None, None]:
        parsed = _Parsed()
        parser = MultipartParser(_boundary(self._request), _callbacks(parsed))
        # The file is bounded by max_file; the rest of the body by FORM_OVERHEAD.
        body = bounded_stream(
            self._request, self._max_file + FORM_OVERHEAD, self._refusal, self._body_timeout
        )
        try:
            async for chunk in body:
                parser.write(chunk)
                while parsed.events:
                    yield parsed.events.popleft()
            parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"multipart: {exc}") from None
        finally:
            await body.aclose()
        if not parsed.ended:
            raise BadRequest("multipart: the body ended before its closing boundary")


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest("the body must be multipart/form-data with a boundary")
    return boundary


def _callbacks(parsed: _Parsed) -> MultipartCallbacks:
    """Parser callbacks that record into `parsed` (python-multipart calls them synchronously)."""
    headers: list[tuple[bytes, bytes]] = []
    name = bytearray()
    value = bytearray()

    def on_header_end() -> None:
        headers.append((bytes(name).lower(), bytes(value)))
        name.clear()
        value.clear()

    def on_headers_finished() -> None:
        parsed.events.append(_part(dict(headers)))
        headers.clear()

    def on_end() -> None:
        parsed.ended = True

    return {
        "on_header_field": lambda data, start, end: name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": lambda data, start, end: parsed.events.append(bytes(data[start:end])),
        "on_part_end": lambda: parsed.events.append(None),
        "on_end": on_end,
    }


def _part(headers: dict[bytes, bytes]) -> Part:
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    if b"name" not in options:
        raise BadRequest('multipart: a part without a Content-Disposition "name"')
    filename = options.get(b"filename")
    return Part(
        name=_text(options[b"name"]),
        filename=None if filename is None else _text(filename),
        content_type=_text(headers.get(b"content-type", b"")).strip(),
    )


def _text(raw: bytes) -> str:
    # As Starlette's own form parsing decodes: UTF-8, else Latin-1 (which takes any bytes).
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
