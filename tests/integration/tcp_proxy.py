"""A TCP proxy for fault tests: one agent's connections to a server go through it, and the test
can freeze them (bytes are held, sockets stay open: to that agent the server looks stalled, as
when its own event loop stops) or cut them (every proxied connection is closed)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["FreezableProxy"]

_CHUNK_BYTES = 65536


class FreezableProxy:
    """Forwards connections on 127.0.0.1:`port` (chosen on `start()`) to `host`:`target_port`."""

    def __init__(self, host: str, target_port: int) -> None:
        self._host = host
        self._target_port = target_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()

    def freeze(self) -> None:
        """Hold every byte in both directions; the connections stay open."""
        self._flowing.clear()

    async def cut(self) -> None:
        """Close every proxied connection (new ones are accepted) and let bytes flow again."""
        for pump in list(self._pumps):
            pump.cancel()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self._host, self._target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await source.read(_CHUNK_BYTES):
                await self._flowing.wait()
                sink.write(chunk)
                await sink.drain()
            await self._flowing.wait()  # a frozen proxy holds the end of a stream too
        sink.close()
