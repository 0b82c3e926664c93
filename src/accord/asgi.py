"""What the API and the gateway's HTTP fronts share about raw ASGI."""

from __future__ import annotations

from starlette.types import Receive


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """A request's body, or None once it is over `limit` bytes (read no further): chunked
    uploads are capped as well as those with a Content-Length. A disconnect ends the body."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body = message.get("body", b"")
        seen += len(body)
        if seen > limit:
            return None
        chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
