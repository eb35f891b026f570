"""ASGI request-body helpers: the declared length, bounded reads, and replaying a body already read."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope


def body_headers(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length if valid, whether the body is chunked)."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


async def read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        more = message.get("more_body", False)
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """The already-read ``body`` as one message, then the connection's own messages (its disconnect)."""
    sent = False

    async def next_message() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return next_message
