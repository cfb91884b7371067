"""Server-sent events from raw bytes, however the network splits them.

An event's `data:` lines are joined with newlines; comments (`:`), `event:`, `id:` and `retry:` are
skipped; lines end in LF, CRLF or CR. A line over MAX_LINE_BYTES, or bytes that are not UTF-8,
raise `SSEError`: an upstream that sends them is broken, and the stream ends closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

MAX_LINE_BYTES = 4 << 20


class SSEError(ValueError):
    """The upstream's bytes are not a server-sent event stream."""


def events(chunks: Iterable[bytes]) -> Iterator[str]:
    """The data of each event in a byte stream split anywhere."""
    buf = b""
    data: list[str] = []
    for chunk in chunks:
        buf += chunk
        while True:
            cut = _line_end(buf)
            if cut is None:
                if len(buf) > MAX_LINE_BYTES:
                    raise SSEError(f"an event line is over {MAX_LINE_BYTES} bytes")
                break
            end, nxt = cut
            line, buf = buf[:end], buf[nxt:]
            if not line:  # a blank line ends the event
                if data:
                    yield "\n".join(data)
                    data = []
                continue
            field, value = _field(line)
            if field == "data":
                data.append(value)
    rest = buf.rstrip(b"\r\n")
    if rest:  # the last event without its blank line: take its data, as browsers do not, but servers send it
        field, value = _field(rest)
        if field == "data":
            data.append(value)
    if data:
        yield "\n".join(data)


def _line_end(buf: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next) or None when no line is complete. A CR at the
    very end may be the first half of a CRLF: wait for the next byte."""
    lf, cr = buf.find(b"\n"), buf.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buf):
        return None
    return (cr, cr + 2) if buf[cr + 1:cr + 2] == b"\n" else (cr, cr + 1)


def _field(line: bytes) -> tuple[str, str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SSEError(f"the stream is not UTF-8: {e}") from None
    if text.startswith(":"):
        return "", ""
    name, _, value = text.partition(":")
    return name, value[1:] if value.startswith(" ") else value
