"""A TCP proxy that adds network round-trip latency in front of a local server, for the
loader benchmarks (issue 31): this machine's kernel has no `netem` qdisc, so a network
namespace with `tc qdisc ... netem delay` is not available.

    with delayed("http://127.0.0.1:8333", rtt_ms=10, cpus={1}) as endpoint:
        ...  # talk to `endpoint` instead: every byte arrives RTT/2 later each way

Every chunk read from one side is written to the other RTT/2 after it arrived, in order,
however much is already queued: data in flight is delayed, never throttled, and each
connection has its own queues, so connections do not wait for each other. A client's
connection is accepted at once (locally), so its first bytes are held one more RTT, the
TCP handshake a real network would cost before them. The proxy runs in its own process,
pinned to `cpus`, so its CPU stays off the loader's cores.

    python bench/latency_proxy.py --target 127.0.0.1:8333 --rtt-ms 10 [--cpus 1]
prints the port it listens on (127.0.0.1), then serves until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.core.errors import OneLineParser, run_cli  # noqa: E402

# Large reads: the proxy's CPU per byte (on the server's core) falls with the read size.
_CHUNK = 1 << 20


async def _pipe(reader, writer, delay: float, not_before: float, peer) -> None:
    """Forward `reader` to `writer`, each chunk `delay` s after it arrived (and not before
    `not_before`); end-of-stream is forwarded as a half-close, with the same delay."""
    loop = asyncio.get_running_loop()
    # Unbounded on purpose: a bounded queue would throttle the sender to what one delay
    # window holds. What is queued is at most the link's bytes over RTT/2.
    queue: asyncio.Queue = asyncio.Queue()

    async def send() -> None:
        try:
            while True:
                due, chunk = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if chunk is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
        except OSError:  # the receiving side went away: drop the whole connection
            writer.transport.abort()
            peer.transport.abort()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(_CHUNK):
            queue.put_nowait((max(loop.time(), not_before) + delay, chunk))
    except OSError:
        pass  # a reset reads as the end of this direction
    queue.put_nowait((max(loop.time(), not_before) + delay, None))
    await sender


async def _connection(client_r, client_w, host: str, port: int, delay: float) -> None:
    accepted = asyncio.get_running_loop().time()
    try:
        server_r, server_w = await asyncio.open_connection(host, port, limit=_CHUNK)
    except OSError:
        client_w.transport.abort()
        return
    try:
        await asyncio.gather(
            _pipe(client_r, server_w, delay, accepted + 2 * delay, client_w),
            _pipe(server_r, client_w, delay, 0.0, server_w),
        )
    finally:
        for writer in (client_w, server_w):
            writer.close()


async def _serve(host: str, port: int, rtt_ms: float) -> None:
    delay = rtt_ms / 2000

    async def handle(reader, writer):
        await _connection(reader, writer, host, port, delay)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024, limit=_CHUNK)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def _cpu_set(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c.strip()}


def main(argv=None) -> int:
    parser = OneLineParser(prog="bench/latency_proxy.py", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added")
    parser.add_argument("--cpus", default="", help="run on these CPUs (default: any)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit() or not 0 <= args.rtt_ms < 1e6:
        parser.error("--target must be HOST:PORT and --rtt-ms at least 0")
    if cpus := _cpu_set(args.cpus):
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, int(port), args.rtt_ms))
    return 0


@contextlib.contextmanager
def delayed(endpoint: str, rtt_ms: float, cpus=()):
    """`endpoint` (scheme://host:port) as seen across `rtt_ms` of round trip: the URL of
    a proxy process in front of it (pinned to `cpus`, when given), stopped on exit."""
    url = urlparse(endpoint)
    cmd = [
        sys.executable, os.path.abspath(__file__), "--target", f"{url.hostname}:{url.port}",
        "--rtt-ms", str(rtt_ms), "--cpus", ",".join(str(c) for c in sorted(cpus)),
    ]  # fmt: skip
    proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        port = proxy.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the latency proxy did not start (exit {proxy.poll()})")
        yield f"{url.scheme}://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait()
        proxy.stdout.close()


if __name__ == "__main__":
    sys.exit(run_cli("bench/latency_proxy.py", main))
