"""TEST-ONLY: local HTTP and S3 servers over a dataset directory. The synthetic datasets
themselves (make_dataset, split_keys, raw tar helpers, reindex) live in
`tagtrain.loader.synthetic` and are re-exported here for the tests.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import socket
import threading
from pathlib import Path

from tagtrain.loader.synthetic import (  # noqa: F401  (re-exported for the tests)
    VOCABULARY,
    make_dataset,
    read_members,
    reindex,
    split_keys,
    track_audio,
    write_raw_tar,
)


def uneven_train_shards(out: Path):
    """(out, card): four mel-only train shards of 7, 2, 9 and 5 samples, for the
    partitioning and persistent-pool tests."""
    card = make_dataset(out, {"train": [7, 2, 9, 5]}, seconds=(1.0, 1.5), stored=("mel",), seed=2)
    return out, card


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_http(directory: str | Path):
    """A local HTTP server over `directory`; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def serve_s3(directory: str | Path, bucket: str = "shards", prefix: str = "data"):
    """A local S3 server (moto) holding `directory`'s files under s3://bucket/prefix.
    Yields (url, endpoint_url); sets test credentials in the environment meanwhile."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    saved = {k: os.environ.get(k) for k in [*S3_CREDENTIALS, "AWS_DEFAULT_REGION"]}
    os.environ.update(S3_CREDENTIALS, AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        yield f"s3://{bucket}/{prefix}", endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
