"""The SeaweedFS fixture is a real S3 server: ranged reads work and data survives a restart."""

from __future__ import annotations

import socket

import pytest


def test_round_trip_ranged_read_and_restart(seaweed_s3, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    payload = bytes(range(256)) * 4096
    (src / "sub" / "blob.bin").write_bytes(payload)
    url = seaweed_s3.upload_dir(src, "bucket/prefix")
    assert url == "s3://bucket/prefix"
    fs = seaweed_s3.filesystem()
    assert fs.cat_file("bucket/prefix/sub/blob.bin", start=1000, end=1010) == payload[1000:1010]

    seaweed_s3.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", seaweed_s3.ports["s3.port"]), timeout=2)
    seaweed_s3.start()
    assert seaweed_s3.filesystem().cat_file("bucket/prefix/sub/blob.bin") == payload
