"""Requests in flight, seen by the server (issue 31, item 3: latency hidden): a fetch's
range requests all go out at once (up to the per-process depth), and the whole-shard
copies a fetch needs download side by side, not one after the other. A small S3 server
here counts what it holds at once; it holds each request until the expected number have
arrived, so the count does not depend on timing (on a busy machine the last of 64
requests took over 2 s to arrive). If they never do, the first wait times out and the
server stops holding requests: the test then fails on the count, after one timeout."""

from __future__ import annotations

import collections
import email.utils
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tagtrain.loader import s3ranges
from tagtrain.loader.cache import ShardCache
from tagtrain.loader.ranged import _DOWNLOADS, RangeFetcher

OBJECT = bytes(range(256)) * 40_000  # 10 MB


class CountingS3(ThreadingHTTPServer):
    """GET (ranges) and HEAD of any key, every object OBJECT; `most` and `most_keys`:
    the most requests, and of distinct keys, in flight at once."""

    daemon_threads = True

    def __init__(self, gate):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gate = gate  # (requests in flight, keys in flight) -> release them
        self.cond = threading.Condition()
        self.in_flight: collections.Counter = collections.Counter()
        self.most = self.most_keys = 0
        self.gave_up = False  # a wait timed out: requests are no longer held

    def hold(self, key: str) -> None:
        with self.cond:
            self.in_flight[key] += 1
            count, keys = sum(self.in_flight.values()), len(+self.in_flight)
            self.most, self.most_keys = max(self.most, count), max(self.most_keys, keys)
            self.cond.notify_all()
            if not self.gave_up:
                released = lambda: self.gate(self.most, self.most_keys)  # noqa: E731
                self.gave_up = not self.cond.wait_for(released, timeout=30.0)

    def release(self, key: str) -> None:
        with self.cond:
            self.in_flight[key] -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _headers(self, status: int, length: int, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", '"fixed"')
        self.send_header("Last-Modified", email.utils.formatdate(0, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()

    def do_HEAD(self):
        self.server.hold(self.path)
        try:
            self._headers(200, len(OBJECT))
        finally:
            self.server.release(self.path)

    def do_GET(self):
        self.server.hold(self.path)
        try:
            first, last = self.headers["Range"].split("=", 1)[1].split("-")
            first, last = int(first), min(int(last), len(OBJECT) - 1)
            body = OBJECT[first : last + 1]
            extra = [("Content-Range", f"bytes {first}-{last}/{len(OBJECT)}")]
            self._headers(206, len(body), extra)
            self.wfile.write(body)
        finally:
            self.server.release(self.path)


@pytest.fixture
def counting_s3():
    servers = []

    def start(gate):
        server = CountingS3(gate)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        s3 = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
        return server, {
            "s3": {**s3, "client_kwargs": {**s3["client_kwargs"], "region_name": "us-east-1"}}
        }

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_fetchs_range_requests_are_all_in_flight_at_once(counting_s3):
    depth = s3ranges._CONCURRENCY
    assert depth >= 64  # a fetch window's merged requests (~64 MB of ~1 MB GETs) at once
    server, options = counting_s3(lambda most, keys: most >= depth)
    fetcher = RangeFetcher(["s3://bucket/shard.tar"], options, retries=0, backoff=0.01)
    # Spaced beyond the merge gap: one request each.
    ranges = [(i * 100_000, 1_000) for i in range(depth + 8)]
    parts = fetcher.fetch(0, ranges)
    assert parts == [OBJECT[o : o + n] for o, n in ranges]
    assert fetcher.obstore_requests == fetcher.requests == depth + 8
    assert server.most == depth


def test_whole_shard_copies_of_one_fetch_download_side_by_side(counting_s3, tmp_path):
    server, options = counting_s3(lambda most, keys: keys >= _DOWNLOADS)
    cache = ShardCache(str(tmp_path / "cache"), retries=0, backoff=0.01)
    urls = [f"s3://bucket/train-{i:06d}.tar" for i in range(_DOWNLOADS + 2)]
    fetcher = RangeFetcher(
        urls, options, retries=0, backoff=0.01, open_cached=lambda u: cache.open_copy(u, options)
    )
    jobs = {shard: [(512 * shard, 100)] for shard in range(len(urls))}
    got = fetcher.fetch_many(jobs)
    assert got == {s: [OBJECT[512 * s : 512 * s + 100]] for s in jobs}
    assert server.most_keys == _DOWNLOADS
    assert fetcher.requests == 0  # every range read from the local copies
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").glob("*.tar")) == [
        u.rsplit("/", 1)[1] for u in urls
    ]
