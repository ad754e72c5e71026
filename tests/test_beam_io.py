"""beam_io's shared S3 clients and byte-range reads (no Beam pipeline, no server: seconds)."""

from __future__ import annotations

import pytest

from pipelines.beam import beam_io


def test_s3_filesystem_calls_share_one_boto3_client_per_setting():
    # Beam's S3 filesystem makes an S3IO per call; each used to build a boto3 client
    # (~0.2 CPU-s): three per audio file read.
    from apache_beam.io.aws import s3io
    from apache_beam.io.filesystems import FileSystems

    args = ("--s3_endpoint_url=http://127.0.0.1:9", "--s3_access_key_id=a",
            "--s3_secret_access_key=b", "--s3_region_name=us-east-1")  # fmt: skip
    beam_io.configure(args)
    options = FileSystems._pipeline_options
    first, second = s3io.S3IO(options=options), s3io.S3IO(options=options)
    assert first.client.client is second.client.client  # the boto3 client
    # ...but not Beam's wrapper, which holds the stream being downloaded: shared by the
    # fetch threads, one thread's read swapped another's stream.
    assert first.client is not second.client
    beam_io.configure((*args[:1], "--s3_access_key_id=other", *args[2:]))
    other = s3io.S3IO(options=FileSystems._pipeline_options)
    assert other.client.client is not first.client.client
    beam_io.configure(())


def test_range_reader_reads_ranges_and_refuses_a_short_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with beam_io.RangeReader() as reader:
        assert reader.read(str(path), 10, 5) == bytes(range(10, 15))
        assert reader.read(str(path), 1020, 4) == bytes(range(252, 256))
        with pytest.raises(ValueError, match="asked"):
            reader.read(str(path), 1020, 8)
        assert reader.read(str(path), 0, 2) == b"\x00\x01"  # still usable
