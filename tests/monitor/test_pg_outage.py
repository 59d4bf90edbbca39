"""PostgreSQL unreachable mid-stream (a proxy of the test's own between the store and the
server, cut and restored; the shared server itself is never stopped): commits wait and retry,
ingest pauses at the store's bound, nothing is acknowledged before it is committed, and once
the database is back every record is stored and counted once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import eventually, free_port
from tests.stores import pg_database

T0 = 1_700_000_040.0


class TcpProxy:
    """127.0.0.1:port -> the PostgreSQL server, until `cut()`; `restore()` listens again."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones, as a dead server would."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {writer, up_writer}
        pipes = [asyncio.create_task(self._pipe(reader, up_writer))]
        pipes.append(asyncio.create_task(self._pipe(up_reader, writer)))
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def proxied_database() -> AsyncIterator[tuple[str, TcpProxy]]:
    with pg_database() as url:
        proxy = TcpProxy()
        await proxy.restore()
        try:
            yield url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
        finally:
            await proxy.cut()


async def test_an_unreachable_database_pauses_ingest_and_loses_nothing_acked() -> None:
    async with proxied_database() as (url, proxy):
        settings = Settings.model_validate(
            {
                "store": {
                    "url": url,
                    "record_sample_rate": 1.0,
                    "queue_size": 100,
                    "connect_timeout_s": 1,
                },
                "api": {"bind": "127.0.0.1:0"},
            }
        )
        daemon = Daemon(settings, clock=FakeClock(T0))
        store, acked = daemon.store, list[int]()

        def put(i: int) -> None:
            payload = b'{"id": "r%d", "app": "a", "latency_ms": 5}' % i
            daemon.pipeline.process_payload(payload, None, "mqtt", T0)
            daemon.pipeline.after_commit(functools.partial(acked.append, i))

        async with store:
            for i in range(50):
                put(i)
            await store.flush()
            assert len(acked) == 50

            await proxy.cut()
            for i in range(50, 200):
                put(i)
            assert not store.has_room()  # ingest pauses here: memory stays bounded

            def commits_failed() -> bool:
                errors = daemon.registry.get_sample_value("lookout_store_errors_total")
                return (errors or 0) >= 2

            await eventually(commits_failed, timeout_s=30)
            assert len(acked) == 50  # nothing acknowledged while the database is away

            await proxy.restore()
            await eventually(lambda: len(acked) == 200, timeout_s=60)
            assert acked == list(range(200))  # in order
            assert await store.count_records() == 200
            (minute,) = await store.partials(T0 - 60)
            assert minute.count == 200
