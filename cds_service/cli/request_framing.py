"""When the bytes read so far hold a whole HTTP/1.1 request: the head, and the body its
``Content-Length`` or chunked framing announces. Pure: the serving worker
(:mod:`cds_service.cli.worker`) asks it after every read.

It only has to tell "wait for more" from "hand it over": a request it cannot make sense of (a bad
length, a bad chunk size, a head too long) is handed over at once, and gunicorn's parser refuses it
with a 400 exactly as it would have.
"""

from __future__ import annotations

from dataclasses import dataclass

Buffer = bytes | bytearray  # the worker's buffer is checked as it grows, without a copy

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 1024
HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Head:
    """What the head says about the body that follows it."""

    end: int  # index of the first body byte
    length: int | None = None  # Content-Length, when one valid value is given
    chunked: bool = False
    expects_continue: bool = False  # Expect: 100-continue
    malformed: bool = False


def read_head(data: Buffer) -> Head | None:
    """The head of the request at the start of ``data``, or None while it is incomplete."""
    end = data.find(HEAD_END)
    if end < 0:
        return None
    lengths: list[str] = []
    chunked = expects_continue = False
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            lengths.append(value)
        elif name == "transfer-encoding":
            chunked = chunked or "chunked" in value
        elif name == "expect":
            expects_continue = value == "100-continue"
    distinct = set(lengths)
    malformed = len(distinct) > 1 or any(not length.isdigit() for length in distinct)
    length = int(lengths[0]) if lengths and not malformed else None
    return Head(end + len(HEAD_END), length, chunked, expects_continue, malformed)


def is_complete(data: Buffer, max_body: int) -> bool:
    """``data`` holds a whole request, or enough of one for the application or gunicorn to answer
    it without reading on (a body over ``max_body``, a head too long, a framing error)."""
    head = read_head(data)
    if head is None:
        return len(data) > MAX_HEAD_BYTES
    if head.malformed or (head.chunked and head.length is not None):
        return True
    if head.chunked:
        return chunked_body_complete(data, head.end, max_body)
    if head.length is None or head.length > max_body:
        return True
    return len(data) - head.end >= head.length


def chunked_body_complete(data: Buffer, start: int, max_body: int) -> bool:
    """The chunked body from ``start`` has ended (its last chunk and trailers are in), is over
    ``max_body``, or is malformed."""
    position = start
    total = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return len(data) - position > MAX_CHUNK_LINE_BYTES
        size_text = data[position:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True
        if size < 0:
            return True
        if size == 0:  # the last chunk: then trailer lines, if any, and an empty line
            return data.find(HEAD_END, line_end) >= 0
        total += size
        if total > max_body:
            return True
        position = line_end + 2 + size + 2
        if position > len(data):
            return False
