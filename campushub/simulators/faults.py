"""Fault knobs: an ASGI middleware that makes a stand-in system misbehave like a real one.

Each knob is a rate between 0 and 1 (or a latency); a seeded generator decides per request, so
a run with the same knobs and the same requests sees the same faults. `malformed_rate` is not
applied here but read by the services when they render records (see `malformed.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from dataclasses import asdict, dataclass, fields

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths that stay well-behaved whatever the knobs: the control plane and the API description.
UNFAULTED_PREFIXES = ("/_admin", "/openapi.json", "/docs")


@dataclass
class FaultSettings:
    error_rate: float = 0.0  # answer 500/502/503 with a proxy's HTML page
    rate_limit_rate: float = 0.0  # answer 429 with Retry-After
    retry_after: float = 1.0  # seconds asked for by a 429
    retry_after_as_date: bool = False  # send Retry-After as an HTTP-date instead of seconds
    latency_ms: float = 0.0  # added before every answer
    drop_rate: float = 0.0  # send the headers, then close the connection mid-answer
    truncate_rate: float = 0.0  # a complete HTTP answer whose body is cut in half
    malformed_rate: float = 0.0  # share of records served broken (bad check digit, bad date, ...)

    def update(self, values: dict[str, object]) -> None:
        known = {f.name: f.type for f in fields(self)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}; known: {sorted(known)}")
        for name, value in values.items():
            kind = type(getattr(self, name))
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"fault knob {name} takes true or false, not {value!r}")
                value = value.lower() in ("true", "1")
            try:
                converted = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"fault knob {name} takes a {kind.__name__}, not {value!r}") from None
            if name.endswith("_rate") and not 0 <= converted <= 1:
                raise ValueError(f"fault knob {name} is a rate between 0 and 1, not {value!r}")
            setattr(self, name, converted)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class FaultMiddleware:
    def __init__(self, app: ASGIApp, settings: FaultSettings, seed: int = 0) -> None:
        self.app = app
        self.settings = settings
        self.rng = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNFAULTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        knobs = self.settings
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        roll = self.rng.random()
        if roll < knobs.error_rate:
            await self._error(send, self.rng.choice((500, 502, 503)))
        elif roll < knobs.error_rate + knobs.rate_limit_rate:
            await self._rate_limited(send)
        elif roll < knobs.error_rate + knobs.rate_limit_rate + knobs.drop_rate:
            await self._dropped(scope, receive, send)
        elif roll < knobs.error_rate + knobs.rate_limit_rate + knobs.drop_rate + knobs.truncate_rate:
            await self._truncated(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _error(send: Send, status: int) -> None:
        body = f"<html><body><h1>{status} Bad Gateway</h1><hr>nginx</body></html>".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _rate_limited(self, send: Send) -> None:
        wait = self.settings.retry_after
        if self.settings.retry_after_as_date:
            # HTTP-dates have whole seconds: round up so the client never comes back early.
            value = email.utils.formatdate(time.time() + wait + 1, usegmt=True)
        else:
            value = str(max(0, round(wait)))
        body = b'{"error": "too many requests"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", value.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _dropped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward the headers, then end without the body: the server closes the connection."""

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
                raise _Dropped

        with contextlib.suppress(_Dropped):
            await self.app(scope, receive, headers_only)

    async def _truncated(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer the answer and send its first half as if it were all of it."""
        start: Message = {}
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, buffer)
        body = b"".join(chunks)
        body = body[: len(body) // 2]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"etag")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Dropped(Exception):
    pass
