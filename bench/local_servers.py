"""Local servers that serve a dataset folder to the loader benchmarks, each in its own
process: an `http.server`, or a SeaweedFS S3 server (`.venv/bin/weed server -s3`, a real
S3 implementation) holding it under s3://bench/data. `SERVERS` maps a served URL to its
server's pid (its CPU is counted apart from the loader's); `SERVER_CPUS` pins them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"error: local server on port {port} did not start")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


_WEED_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)  # fmt: skip
_S3_KEYS = {"key": "bench", "secret": "bench-secret"}


SERVER_CPUS: set[int] = set()  # --server-cpus: the CPUs server processes run on (all: empty)
SERVERS: dict[str, int] = {}  # data URL -> pid of the local server process serving it


def _start_server(cmd: list[str]) -> subprocess.Popen:
    # Pinned before exec, so every thread the server starts inherits the CPU set.
    pin = (lambda: os.sched_setaffinity(0, SERVER_CPUS)) if SERVER_CPUS else None
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin
    )


def _seaweed(directory: Path, work: Path):
    """A SeaweedFS S3 server (`.venv/bin/weed server -s3`) holding `directory` under
    s3://bench/data; returns (process, storage options)."""
    work.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS))))
    cmd = [
        str(Path(sys.executable).with_name("weed")), "server", f"-dir={work}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-metricsPort=0", "-master.volumeSizeLimitMB=64",
        "-volume.max=50", *(f"-{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    server = _start_server(cmd)
    _wait_for_port(ports["s3.port"], 60)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    options = {"s3": {**_S3_KEYS, "client_kwargs": {"endpoint_url": endpoint}}}
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options["s3"])
    for _attempt in range(50):  # the gateway accepts connections before it serves
        try:
            fs.mkdir("bench")
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    for path in sorted(directory.iterdir()):
        if path.is_file():
            fs.pipe_file(f"bench/data/{path.name}", path.read_bytes())
    return server, options


@contextlib.contextmanager
def served(source: str, directory: Path):
    """(data URL, storage options) for a source over `directory`: local files, a local
    `http.server` process, or a local SeaweedFS S3 server (a real S3 implementation, in
    its own process); "s3-cache" is S3 read through the loader's local shard cache."""
    if source == "local":
        yield str(directory), {}
        return
    if source not in ("http", "s3", "s3-cache"):
        raise SystemExit(f"error: unknown source {source!r}")
    with tempfile.TemporaryDirectory(prefix="tagtrain-bench-") as work:
        if source == "http":
            (port,) = _free_ports(1)
            cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
            server = _start_server([*cmd, "--directory", str(directory)])
            _wait_for_port(port)
            url, options = f"http://127.0.0.1:{port}", {}
        else:
            server, options = _seaweed(directory, Path(work) / "weed")
            url = "s3://bench/data"
        try:
            SERVERS[url] = server.pid
            yield url, options
        finally:
            SERVERS.pop(url, None)
            server.terminate()
            server.wait()
