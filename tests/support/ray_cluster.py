"""A real two-node Ray cluster on loopback, started and stopped by a fixture.

Both nodes are processes on this machine, on loopback addresses: the head on 127.0.0.3 (Ray
rewrites 127.0.0.1 itself to the machine's outward address, so the fixture avoids that one) and
a worker node on 127.0.0.2. Distinct addresses let a test tell the nodes apart and keep the
driver, which joins through the head's address, on the head. Token authentication is on, with a
token file of the fixture's own. Every node runs ``ray start --block`` in its own process group,
so a test can kill one node (a lost machine) and the fixture stops exactly what it started;
``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aimock import free_port

RAY = str(Path(sys.executable).with_name("ray"))
SUPPORT = Path(__file__).parent


class RayCluster:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tpray", dir="/tmp"))  # short: Ray's socket paths have a limit
        token = self.tmp / "token"
        token.write_text(secrets.token_hex(32))
        self.port = free_port()
        self.address = f"127.0.0.3:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "PYTHONPATH": str(SUPPORT), "RAY_USAGE_STATS_ENABLED": "0",
                    # the test plugins note each run here (workers get the nodes' environment)
                    "TP_SPY": str(self.tmp / "spy.txt"),
                    # notice a lost node within seconds, not the default half minute
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - the node's whole life
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = proc
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (self.tmp / f"{name}.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray node {name} did not start:\n" + (self.tmp / f"{name}.log").read_text())
            time.sleep(0.2)

    def start(self, worker_cpus: int = 1, head_cpus: int = 1) -> RayCluster:
        self._start("head", ["--head", "--node-ip-address=127.0.0.3", f"--port={self.port}",
                             f"--num-cpus={head_cpus}", "--include-dashboard=false",
                             f"--temp-dir={self.tmp / 'ray'}"])
        self._start("worker", [f"--address={self.address}", "--node-ip-address=127.0.0.2",
                               f"--num-cpus={worker_cpus}"])
        return self

    def kill(self, name: str) -> None:
        """Lose a node: SIGKILL its whole process group (raylet, its workers, their children)."""
        proc = self.nodes.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            proc = self.nodes.pop(name)
            try:  # nothing of a test cluster needs a graceful end
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        # anything of ours that left its process group (Ray daemonises a few helpers)
        subprocess.run(["pkill", "-9", "-f", str(self.tmp)], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """A fresh two-node cluster per test (1 CPU each): tests kill nodes."""
    cluster = RayCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
