"""When the serving worker's event loop holds a whole request (cds_service.cli.request_framing)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.cli.request_framing import (
    MAX_HEAD_BYTES,
    chunked_body_complete,
    is_complete,
    read_head,
)

LIMIT = 1000
HEAD = b"POST /cds-services/x HTTP/1.1\r\nHost: h\r\n"


def chunked(body: bytes, size: int, trailers: bytes = b"") -> bytes:
    """``body`` in the chunked coding, ``size`` bytes a chunk."""
    parts = [
        f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        for piece in (body[start : start + size] for start in range(0, len(body), size))
    ]
    return b"".join(parts) + b"0\r\n" + trailers + b"\r\n"


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (HEAD + b"Content-Length: 5\r\n\r\nabcd", False),
        (HEAD + b"Content-Length: 5\r\n\r\nabcde", True),
        (HEAD + b"content-length:  5 \r\n\r\nabcde", True),
        (HEAD + b"Content-Length: 0\r\n\r\n", True),
        (HEAD + b"Content-Length: 5001\r\n\r\n", True),  # over the limit: the app answers 413
        (HEAD + b"Content-Length: -1\r\n\r\n", True),  # malformed: gunicorn answers 400
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", True),
        (HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nabc", False),
        (HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nabcde\r\n0\r\nT: v\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nabcde\r\n0\r\nT: v\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # malformed
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e9\r\n", True),  # 1001 > the limit
        (b"G" * (MAX_HEAD_BYTES + 1), True),  # a head too long: gunicorn refuses it
        (b"G" * MAX_HEAD_BYTES, False),
    ],
)
def test_a_request_is_complete_when_its_framing_says_so(data: bytes, complete: bool) -> None:
    assert is_complete(data, LIMIT) is complete


def test_the_head_says_what_the_body_is() -> None:
    head = read_head(HEAD + b"Expect: 100-continue\r\nContent-Length: 7\r\n\r\nab")
    assert head is not None
    assert (head.length, head.chunked, head.expects_continue, head.malformed) == (
        7,
        False,
        True,
        False,
    )
    assert head.end == len(HEAD) + len(b"Expect: 100-continue\r\nContent-Length: 7\r\n\r\n")
    assert read_head(HEAD) is None


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64), st.data())
def test_a_chunked_body_is_complete_exactly_at_its_end(
    body: bytes, size: int, data: st.DataObject
) -> None:
    """Every proper prefix of a chunked body is incomplete; the whole one is complete."""
    trailers = data.draw(st.sampled_from([b"", b"Trailer: x\r\n", b"A: 1\r\nB: 2\r\n"]))
    encoded = chunked(body, size, trailers)
    assert chunked_body_complete(encoded, 0, LIMIT) is True
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    assert chunked_body_complete(encoded[:cut], 0, LIMIT) is False


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_a_sized_body_is_complete_exactly_at_its_length(body: bytes, cut: int) -> None:
    request = HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    cut = min(cut, len(body))
    assert is_complete(request[: len(request) - len(body) + cut], LIMIT) is (cut == len(body))
