"""A TCP load balancer for trying the replicated topology on one machine (`make run-cluster`):
the api replicas behind one port, as a real deployment puts them behind its own balancer (a
Kubernetes Service, haproxy, nginx: deploy/).

Each connection goes to the next replica, in turn, that is ready: every replica's `/ready`
is asked every READY_INTERVAL_S, so one that is stopping (it answers 503 for a while first:
`BATON_API_DRAIN_SECONDS`) or gone gets no new connections, while those it has finish. A
replica that refuses the connection is skipped for that connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import httpx

log = logging.getLogger(__name__)

READY_INTERVAL_S = 0.2
CHUNK = 64 * 1024


class Balancer:
    def __init__(self, backends: list[tuple[str, int]], ready_path: str = "/ready") -> None:
        self.backends = backends
        self._ready_path = ready_path
        self._ready: set[tuple[str, int]] = set(backends)
        self._turn = itertools.count()

    async def serve(self, host: str, port: int, stopping: asyncio.Event) -> None:
        server = await asyncio.start_server(self._connection, host, port, reuse_address=True)
        watching = asyncio.create_task(self._watch(stopping))
        try:
            async with server:
                await stopping.wait()
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    def _order(self) -> list[tuple[str, int]]:
        """The ready replicas from the next one in turn, then the others (better a replica
        that may be going than none)."""
        start = next(self._turn) % len(self.backends)
        turn = self.backends[start:] + self.backends[:start]
        return [b for b in turn if b in self._ready] + [b for b in turn if b not in self._ready]

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        for host, port in self._order():
            try:
                backend_r, backend_w = await asyncio.open_connection(host, port)
            except OSError:
                self._ready.discard((host, port))
                continue
            await asyncio.gather(_pipe(client_r, backend_w), _pipe(backend_r, client_w))
            return
        client_w.close()  # no replica took it

    async def _watch(self, stopping: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=READY_INTERVAL_S * 5) as http:
            while not stopping.is_set():
                results = await asyncio.gather(
                    *(self._is_ready(http, backend) for backend in self.backends)
                )
                self._ready = {b for b, ok in zip(self.backends, results, strict=True) if ok}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=READY_INTERVAL_S)

    async def _is_ready(self, http: httpx.AsyncClient, backend: tuple[str, int]) -> bool:
        host, port = backend
        try:
            response = await http.get(f"http://{host}:{port}{self._ready_path}")
        except httpx.HTTPError:
            return False
        return response.status_code == 200


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def main() -> None:
    """`python -m baton_cli.balancer --port P --backend HOST:PORT ...` (the local stack)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True, help="HOST:PORT")
    args = parser.parse_args()
    backends = [(b.rpartition(":")[0], int(b.rpartition(":")[2])) for b in args.backend]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s balancer %(message)s")

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        log.info("balancing %s:%d over %s", args.host, args.port, backends)
        await Balancer(backends).serve(args.host, args.port, stopping)

    asyncio.run(run())


if __name__ == "__main__":
    main()
