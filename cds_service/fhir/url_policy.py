"""The one outbound-URL policy: every URL the service calls (a FHIR base, a paging link, a followed
reference, a JWK Set) is parsed and normalised here, and only the normalised form is handed to the
HTTP client (:func:`cds_service.fhir.http.get_streamed` takes nothing else).

Why: compared as strings, ``https://host/tenant-a/fhir/../../tenant-b/fhir`` starts with the
allowed ``https://host/tenant-a/fhir/``, and the HTTP client then resolves the dots and sends
tenant A's token to tenant B. Here dot segments are resolved before any comparison; what a server
might decode into a separator or a dot later (``%2e``, ``%2f``, ``%5c``, ``%25``), ``;`` path
parameters, backslashes, userinfo, fragments, controls and non-ASCII are refused outright; and an
allowlist entry is compared by structure: same scheme, host and port, and a path at or below the
entry's, segment by segment.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 4096
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Percent-encodings that a server may decode into a dot, a separator or another escape.
_ENCODED_DOT = re.compile(r"%2e", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|25)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


class UnsafeUrlError(ValueError):
    """A URL the service will not call; ``reason`` names the rule it breaks (no URL in it, so it
    may be logged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OutboundUrl:
    """A parsed, normalised http(s) URL: lower-case scheme and host, explicit port, dot segments
    resolved. ``str()`` gives the exact text handed to the HTTP client."""

    scheme: str
    host: str  # an IPv6 address without its brackets
    port: int
    path: str  # "" or starting with "/", percent-encoding as given
    query: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{host}{port}{self.path}{query}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path's segments, without the empty one a trailing slash leaves."""
        parts = self.path.split("/")[1:]
        return tuple(parts[:-1] if parts and not parts[-1] else parts)

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def is_within(self, base: OutboundUrl) -> bool:
        """Same origin as ``base``, and a path at or below ``base``'s, whole segments only."""
        prefix = base.segments
        return (self.scheme, self.host, self.port) == (
            base.scheme,
            base.host,
            base.port,
        ) and self.segments[: len(prefix)] == prefix

    def child(self, relative: str) -> OutboundUrl:
        """``relative`` (``Type/id`` or ``Type?query``) below this base. A dot segment in it is
        refused rather than resolved: a query built from a template or a reference names a
        resource, and a resolved ``Patient/..`` would read something else."""
        path = relative.split("?", 1)[0]
        if any(segment in (".", "..") for segment in path.split("/")):
            raise UnsafeUrlError("dot-segment")
        base = str(OutboundUrl(self.scheme, self.host, self.port, self.path.rstrip("/")))
        return parse_outbound(f"{base}/{relative.lstrip('/')}")


@functools.lru_cache(maxsize=1024)
def parse_outbound(url: str) -> OutboundUrl:
    """``url`` parsed and normalised, or :class:`UnsafeUrlError` saying which rule it breaks."""
    _check_text(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrlError("malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrlError("scheme")
    if "@" in parts.netloc:
        raise UnsafeUrlError("userinfo")
    if not parts.hostname:
        raise UnsafeUrlError("no-host")
    _check_path(parts.path)
    return OutboundUrl(
        scheme=scheme,
        host=parts.hostname.lower(),
        port=port if port is not None else DEFAULT_PORTS[scheme],
        path=remove_dot_segments(parts.path),
        query=parts.query,
    )


def _check_text(url: str) -> None:
    """Rules on the whole text, before it is parsed."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrlError("too-long")
    if "\\" in url:
        raise UnsafeUrlError("backslash")
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise UnsafeUrlError("not-printable-ascii")
    if "#" in url:
        raise UnsafeUrlError("fragment")
    if _BAD_ESCAPE.search(url):
        raise UnsafeUrlError("bad-escape")


def _check_path(path: str) -> None:
    """Rules on the path: nothing a server could later decode or split into another path."""
    if ";" in path:
        raise UnsafeUrlError("path-parameter")
    if _ENCODED_DOT.search(path):
        raise UnsafeUrlError("encoded-dot")
    if _ENCODED_SEPARATOR.search(path):
        raise UnsafeUrlError("encoded-separator")


def remove_dot_segments(path: str) -> str:
    """``path`` with ``.`` and ``..`` segments resolved (RFC 3986, 5.2.4); ``..`` never climbs
    above the root."""
    if not path:
        return ""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def parse_base(url: str) -> OutboundUrl:
    """``url`` as a FHIR base URL: an outbound URL without a query."""
    base = parse_outbound(url)
    if base.query:
        raise UnsafeUrlError("query")
    return base


def allowlist_entry(url: str) -> str:
    """The normalised text an allowlist keeps for the FHIR base URL ``url`` (ending in "/")."""
    return str(parse_base(url)).rstrip("/") + "/"


def is_allowed(
    url: OutboundUrl, allowlist: tuple[str, ...], *, loopback_alike: bool = False
) -> bool:
    """``url`` is at or below one of the ``allowlist`` base URLs (each a valid outbound URL).

    ``loopback_alike`` (development) makes ``localhost``, ``127.0.0.1`` and ``::1`` one host, so
    that a sandbox saying ``localhost`` reaches a server allowlisted as ``127.0.0.1``.
    """
    return any(
        candidate.is_within(parse_outbound(entry))
        for candidate in loopback_spellings(url, loopback_alike)
        for entry in allowlist
    )


def loopback_spellings(url: OutboundUrl, alike: bool = True) -> tuple[OutboundUrl, ...]:
    """``url`` under each name of the loopback host when it names one and ``alike``; else itself."""
    if not (alike and url.is_loopback):
        return (url,)
    return tuple(replace(url, host=host) for host in sorted(LOOPBACK_HOSTS))
