"""A Flower deployment on this machine (127.0.0.1 only): ``fedgen deploy local``, the deployment
tests and the runtime benchmarks.

``with Loopback(tmp, num_nodes=3) as fed:`` generates TLS certificates and one SuperNode key per
node, starts ``flower-superlink`` with TLS and ``--enable-supernode-auth``, registers each key
with ``flwr supernode register`` and starts ``flower-supernode --node-config partition-id=K``.
``fed.env`` (``FLWR_HOME`` in ``tmp``, whose ``config.toml`` names the SuperLink connection
``loopback``) is the environment for ``flwr run``. Every process is started in its own session
and stopped on exit by its PID (its process group: the SuperLink's ServerApp and each
SuperNode's ClientApp processes are its children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedgen.runtime.flower.pki import make_node_key, make_tls

CONNECTION = "loopback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of a process's descendants (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else name


class Loopback:
    """SuperLink + ``num_nodes`` SuperNodes on 127.0.0.1 with TLS and SuperNode authentication."""

    def __init__(
        self,
        root: Path,
        num_nodes: int,
        env: dict[str, str] | None = None,
        start_timeout: float = 60,
        num_partitions: int | None = None,
    ):
        """``num_partitions`` (default ``num_nodes``): node i serves the partitions k with k mod
        ``num_nodes`` == i, so fewer nodes than clients still serve every client."""
        self.root, self.num_nodes, self.start_timeout = Path(root), num_nodes, start_timeout
        self.num_partitions = num_nodes if num_partitions is None else num_partitions
        self.home = self.root / "flwr-home"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        src = str(Path(__file__).resolve().parents[2])  # the directory holding the fedgen package
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        bindir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp, flwr-clientapp
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PYTHONPATH": path,
            "PATH": os.pathsep.join((bindir, os.environ.get("PATH", ""))),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    # -- processes -------------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen(
            cmd, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self, name: str, timeout: float = 15) -> None:
        """Stop one started process and its children (its process group) by its PID."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        kids = descendants(proc.pid)  # e.g. the SuperLink's SuperExec, started in its own session
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)  # the group led by this PID (start_new_session=True)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):  # children left in the group
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in kids:  # descendants outside the group, by PID
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "superlink"):  # SuperNodes first
            self.stop(name)

    def _wait_port(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited:\n{self.log('superlink')[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"flower-superlink did not listen on {self.address} within {self.start_timeout} s")

    # -- federation ------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A ``flwr`` CLI command against this SuperLink (bounded)."""
        return subprocess.run(
            [_bin("flwr"), *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def register(self, name: str) -> Path:
        """A new SuperNode key pair, its public key registered with the SuperLink; returns the private key."""
        private, public = make_node_key(self.root / "keys", name)
        r = self.flwr("supernode", "register", str(public), CONNECTION, "--format", "json")
        if r.returncode != 0 or not json.loads(r.stdout or "{}").get("success"):
            raise RuntimeError(f"flwr supernode register failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
        return private

    def supernode(
        self,
        name: str,
        partition: int | list[int] | None,
        key: Path | None,
        *,
        tls: bool = True,
        retries: int = 5,
    ) -> subprocess.Popen:
        """Start a SuperNode (``--node-config partition-id=K``, or ``partition-ids`` for a list);
        ``tls=False``: a plain-text one."""
        cmd = [_bin("flower-supernode"), "--superlink", self.address, "--port", str(free_port())]
        cmd += ["--root-certificates", str(self.tls["ca"])] if tls else ["--insecure"]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if partition is not None:
            served = (
                f"partition-ids='{','.join(map(str, partition))}'"
                if isinstance(partition, list)
                else f"partition-id={partition}"
            )
            cmd += ["--node-config", f"{served} store-dir='{self.root / 'store' / name}'"]
        cmd += ["--max-retries", str(retries), "--max-wait-time", "30"]
        return self._start(name, cmd)

    def __enter__(self) -> Loopback:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.root / "certs", ["127.0.0.1", "localhost"])
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.tls["ca"]}"\n'
        )
        try:
            self._start(
                "superlink",
                [
                    _bin("flower-superlink"),
                    "--ssl-ca-certfile", str(self.tls["ca"]),
                    "--ssl-certfile", str(self.tls["cert"]),
                    "--ssl-keyfile", str(self.tls["key"]),
                    "--enable-supernode-auth",
                    "--disable-runtime-dependency-installation",
                    "--host", "127.0.0.1",
                    "--port", str(self.port),
                ],
            )  # fmt: skip
            self._wait_port()
            for i in range(self.num_nodes):
                served = list(range(i, self.num_partitions, self.num_nodes))
                part = served[0] if served == [i] else served
                self.supernode(f"supernode{i}", part, self.register(f"node{i}"))
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
