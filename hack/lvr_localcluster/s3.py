"""A real S3 server on loopback (moto_server), with a bucket and credentials, for tests and the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lvr_localcluster import procs
from lvr_localcluster.ports import free_port, port_is_free, wait_for_port


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str  # host:port, no scheme (the minio client's form)
    access_key: str
    secret_key: str
    bucket: str
    secure: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The variables our S3 clients read (same names as the cluster Secrets carry)."""
        return {"LVR_S3_ENDPOINT": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}


class S3Server:
    """`with S3Server() as s3:` starts moto_server on a free port and creates `bucket`."""

    def __init__(self, bucket: str = "lvr-test", log_dir: str | Path | None = None, *,
                 pid_dir: Path | None = None, marker: str = "", port: int | None = None):
        """`pid_dir`/`marker`: record the server like the cluster's processes (see procs.py), so that
        `make cluster-down` or the cluster's reaper also end it. `port`: a fixed port (default: a free one)."""
        self.bucket, self.port = bucket, port
        self.log_path = Path(log_dir or ".") / "moto_server.log"
        self.pid_dir, self.marker = pid_dir, marker
        self.proc: subprocess.Popen | None = None
        self.endpoint: S3Endpoint | None = None

    def start(self) -> S3Endpoint:
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        if exe is None:
            raise RuntimeError("moto_server not found; install the dev extra: pip install -e '.[dev]'")
        port = self.port or free_port()
        if self.port and not port_is_free(port):
            raise RuntimeError(f"S3 port 127.0.0.1:{port} is taken by another program; stop it, or choose "
                               f"another port with LVR_S3_PORT")
        self.proc = procs.spawn([exe, "-H", "127.0.0.1", "-p", str(port)], log_path=self.log_path,
                                pid_dir=self.pid_dir, marker=self.marker, name="moto_server")
        wait_for_port(port, 30, self.proc, "moto_server")
        self.endpoint = S3Endpoint(f"127.0.0.1:{port}", "lvr-access", "lvr-secret-key", self.bucket)
        from minio import Minio

        client = Minio(self.endpoint.endpoint, self.endpoint.access_key, self.endpoint.secret_key, secure=False)
        if not client.bucket_exists(self.bucket):
            client.make_bucket(self.bucket)
        return self.endpoint

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            procs.forget(self.pid_dir, self.proc)
        self.proc = None

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
