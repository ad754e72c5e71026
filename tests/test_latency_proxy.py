"""bench/latency_proxy.py (issue 31, item 3): the proxy adds at least its round trip to
every request/response exchange over real TCP (and one more for a new connection's
handshake), delays data in flight without throttling it or serialising connections,
keeps every byte in both directions; the loader reads a SeaweedFS dataset through it."""

from __future__ import annotations

import dataclasses
import os
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bench.latency_proxy import delayed
from tagtrain import loader
from tests import shardkit
from tests.test_loader import read_epoch


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def echo():
    """An echo server on real TCP: every byte back as it arrives, a half-close answered
    with one."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _connect(endpoint: str) -> socket.socket:
    host, port = endpoint.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(sock, payload: bytes) -> float:
    start = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(1 << 16)
    assert got == payload
    return time.perf_counter() - start


def test_an_exchange_takes_at_least_the_round_trip_and_a_new_connection_one_more(echo):
    rtt = 0.1
    with delayed(echo, rtt * 1000) as endpoint, _connect(endpoint) as sock:
        first = _exchange(sock, b"ping")  # handshake + request + response
        later = [_exchange(sock, b"ping %d" % i) for i in range(3)]
    assert first >= 2 * rtt
    assert min(later) >= rtt


def test_no_added_delay_at_zero_rtt_is_still_a_faithful_proxy(echo):
    with delayed(echo, 0) as endpoint, _connect(endpoint) as sock:
        assert _exchange(sock, b"x" * 100_000) < 5.0


def _round_trip_all(endpoint: str, payload: bytes) -> bytes:
    """Send `payload` in pieces, half-close, and read the echo up to the end."""
    with _connect(endpoint) as sock:
        for i in range(0, len(payload), 50_000):
            sock.sendall(payload[i : i + 50_000])
        sock.shutdown(socket.SHUT_WR)
        parts = []
        while data := sock.recv(1 << 16):
            parts.append(data)
    return b"".join(parts)


def test_every_byte_of_many_concurrent_connections_comes_back_exactly(echo):
    payloads = [os.urandom(300_000 + 4099 * i) for i in range(24)]
    with delayed(echo, 20) as endpoint, ThreadPoolExecutor(24) as pool:
        echoed = list(pool.map(lambda p: _round_trip_all(endpoint, p), payloads))
    assert [len(e) for e in echoed] == [len(p) for p in payloads]
    assert echoed == payloads


def test_connections_and_data_in_flight_are_delayed_not_serialised(echo):
    rtt = 0.2
    with delayed(echo, rtt * 1000) as endpoint:
        # 16 connections at once: their exchanges overlap (serialised: 16 x 2 RTTs).
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: _exchange(_connect(endpoint), b"%d" % i), range(16)))
        together = time.perf_counter() - start
        # 10 pieces sent 20 ms apart on one connection arrive back 20 ms apart, each one
        # round trip later (throttled to one piece per round trip: 10 RTTs).
        with _connect(endpoint) as sock:
            start = time.perf_counter()
            for i in range(10):
                sock.sendall(b"%d;" % i)
                time.sleep(0.02)
            got = b""
            while got.count(b";") < 10:
                got += sock.recv(1 << 16)
            streamed = time.perf_counter() - start
    assert together < 4 * 2 * rtt
    assert got == b"".join(b"%d;" % i for i in range(10))
    assert 2 * rtt <= streamed < 5 * rtt


def test_the_loader_reads_a_seaweed_dataset_through_20_ms_of_round_trip(tmp_path):
    from tests.seaweed import SeaweedS3

    out = tmp_path / "data"
    card = shardkit.make_dataset(
        out, {"train": [4, 4, 4]}, seconds=(1.0, 1.5), stored=("mel", "pcm"), seed=7
    )
    cfg = loader.LoaderConfig(batch_size=2, workers=0, shuffle_buffer=4, seed=3)
    local, _ = read_epoch(out, card, cfg)
    with SeaweedS3(tmp_path / "seaweed") as server:
        url = server.upload_dir(out, "shards/data")
        with delayed(server.endpoint_url, 20) as endpoint:
            s3 = server.storage_options()
            s3["client_kwargs"] = {**s3["client_kwargs"], "endpoint_url": endpoint}
            remote_cfg = dataclasses.replace(cfg, storage_options={"s3": s3})
            start = time.perf_counter()
            remote, reader = read_epoch(url, card, remote_cfg)
            seconds = time.perf_counter() - start
    assert [b.keys for b in remote] == [b.keys for b in local]
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(remote, local))
    assert reader.stats.range_requests > 0
    assert seconds >= 0.04  # at least the card's and one range's round trips
