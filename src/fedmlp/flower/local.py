"""A whole Flower federation on this machine: one SuperLink and one SuperNode per site on 127.0.0.1,
one run of the app, and every process stopped afterwards (``fedmlp federate``; the tests).

Everything stays on the loopback interface and offline: telemetry, update checks and run-time
dependency installation are off (:func:`flower_env`), proxies are bypassed, and Flower's home
(``FLWR_HOME``: its connection file, installed apps, logs) is a directory of this run.

Processes: each SuperLink and SuperNode is started in its own process group, asked to receive
SIGTERM should this process die (``PR_SET_PDEATHSIG``), and on the way out (success, failure,
Ctrl-C, SIGTERM) every process of their trees (the SuperExecs, the ServerApp and ClientApps they
spawn; the SuperLink's SuperExec runs in a session of its own) is sent SIGTERM, given time to exit,
and SIGKILLed by PID if it is still there.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)

CONNECTION = "fedmlp-local"
PR_SET_PDEATHSIG = 1


def bin_dir() -> Path:
    """Where this interpreter's console scripts are (flower-superlink, flwr, ...)."""
    return Path(sys.executable).parent


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower command: offline, loopback, its state under ``home``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "FLWR_HOME": str(home / "flwr_home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HOME": str(home / "home"),  # keeps ~/.flwr and ~/.cache of the user untouched
        "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns its helpers by bare name
        "FEDMLP_PROGRESS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    (home / "flwr_home").mkdir(parents=True, exist_ok=True)
    (home / "home").mkdir(parents=True, exist_ok=True)
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (free when asked; a start that loses the race fails early)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_config_text(config: dict[str, Any]) -> str:
    """``--node-config`` value: space-separated ``key=value`` pairs, values in TOML (strings quoted)."""
    parts = []
    for key, value in config.items():
        if isinstance(value, str):
            if '"' in value or "'" in value or "\\" in value:
                raise FedmlpError(f"node config '{key}': {value!r} has a quote or backslash, which --node-config cannot carry")
            parts.append(f'{key}="{value}"')
        elif isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the process groups still get stopped on every normal way out
        pass


def _parents() -> dict[int, int]:
    """pid → parent pid of every process (from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@dataclass
class Processes:
    """The processes this federation started, and everything they spawn."""

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    logs: dict[str, Path] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, preexec_fn=_die_with_parent)
        self.started.append((name, process))
        self.logs[name] = log_path
        return process

    def tree(self) -> set[int]:
        """The started processes and all their descendants now (also remembered for the teardown)."""
        parents = _parents()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        found, stack = set(), [p.pid for _, p in self.started]
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack.extend(children.get(pid, []))
        self.seen |= found
        return found

    def check(self) -> None:
        """Fail if the SuperLink died. A SuperNode that exits is a site that disappeared: the
        ServerApp's failure policy deals with it (the SuperLink reports the node as unavailable)."""
        for name, process in self.started:
            if process.poll() is not None and name not in self.gone:
                if not name.startswith("supernode"):
                    raise FedmlpError(f"{name} exited with status {process.returncode} during the run (see {self.logs[name]})")
                log.warning("%s exited with status %s during the run (see %s)", name, process.returncode, self.logs[name])
                self.gone.add(name)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the SuperNodes, then the SuperLink (their process groups), then SIGKILL what is left."""
        self.tree()
        nodes = [p for name, p in self.started if name.startswith("supernode")]
        links = [p for name, p in self.started if not name.startswith("supernode")]
        for group in (nodes, links):
            for process in group:
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            for process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in self.seen - {os.getpid()}):
            self.tree()
            time.sleep(0.1)
        for pid in sorted(self.seen):
            if pid != os.getpid() and _alive(pid):
                log.warning("process %d did not stop on SIGTERM; killing it", pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for _, process in self.started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (the teardown is not itself interrupted)."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def wait_healthy(port: int, process: subprocess.Popen, what: str, log_path: Path, timeout: float = 60.0,
                 ca_cert: Path | None = None) -> None:
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if ca_cert is not None:
        import ssl

        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca_cert))))
    opener = urllib.request.build_opener(*handlers)
    scheme = "https" if ca_cert is not None else "http"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FedmlpError(f"{what} exited with status {process.returncode} while starting (see {log_path})")
        try:
            with opener.open(f"{scheme}://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise FedmlpError(f"{what} did not answer on 127.0.0.1:{port} within {timeout:.0f} s (see {log_path})")


@dataclass
class LocalRun:
    work: Path
    node_configs: list[dict[str, Any]]  # one per site
    run_config: dict[str, Any]
    app_dir: Path
    timeout: float = 0.0  # the whole run; 0: no limit
    secure: bool = False  # TLS on every connection to the SuperLink, and SuperNode authentication
    status: str = ""
    run_id: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def _flwr(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir() / "flwr"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _json_out(result: subprocess.CompletedProcess) -> dict[str, Any]:
    text = result.stdout
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def run_status(env: dict[str, str], cwd: Path, run_id: str) -> str:
    """Flower's status of the run (``finished:completed`` ...), or "" if ``flwr ls`` did not say."""
    try:
        result = _flwr(["ls", CONNECTION, "--run-id", run_id, "--format", "json"], env, cwd)
    except subprocess.TimeoutExpired:
        return ""
    runs = _json_out(result).get("runs") or [{}]
    return str(runs[0].get("status", ""))


def run_federation(run: LocalRun) -> LocalRun:
    """Start the federation, submit the run, wait until the ServerApp has written ``out-federation``
    (or Flower says the run ended), and stop everything. Fills ``run.status`` (Flower's run status)."""
    import tomli_w

    logs = run.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = flower_env(run.work)
    n = len(run.node_configs)
    ports = free_ports(1 + n)
    link_port, node_ports = ports[0], ports[1:]
    processes = Processes()
    begin = time.perf_counter()
    try:
        link_log = logs / "superlink.log"
        link_args = ["--insecure"]
        connection: dict[str, Any] = {"address": f"127.0.0.1:{link_port}", "insecure": True}
        if run.secure:
            from fedmlp.flower.tls import make_credentials

            creds = make_credentials(run.work / "credentials", n)
            link_args = ["--ssl-ca-certfile", str(creds.ca_cert), "--ssl-certfile", str(creds.server_cert),
                         "--ssl-keyfile", str(creds.server_key), "--enable-supernode-auth"]
            connection = {"address": f"127.0.0.1:{link_port}", "root-certificates": str(creds.ca_cert)}
        link = processes.start("superlink", [str(bin_dir() / "flower-superlink"), *link_args, "--host", "127.0.0.1",
                                             "--port", str(link_port), "--disable-runtime-dependency-installation"],
                               env, link_log, run.work)
        wait_healthy(link_port, link, "the SuperLink", link_log, ca_cert=creds.ca_cert if run.secure else None)
        (Path(env["FLWR_HOME"]) / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
        site_nodes = {}
        for i, (config, port) in enumerate(zip(run.node_configs, node_ports)):
            node_args = ["--insecure"]
            if run.secure:  # the coordinator admits each SuperNode by its public key first
                registered = _flwr(["supernode", "register", str(creds.node_public_keys[i]), CONNECTION, "--format", "json"], env, run.work)
                if registered.returncode != 0 or not _json_out(registered).get("success", True):
                    raise FedmlpError(f"flwr supernode register failed: {' '.join((registered.stdout + registered.stderr).split())[-400:]}")
                node_id = _json_out(registered).get("node-id")
                if not isinstance(node_id, int):
                    raise FedmlpError(f"flwr supernode register did not say which node id the key got: {registered.stdout.strip()[-400:]}")
                site_nodes[str(config["client-id"])] = node_id  # this key's node: the only one that may be this site
                node_args = ["--root-certificates", str(creds.ca_cert), "--auth-supernode-private-key", str(creds.node_private_keys[i])]
            processes.start(f"supernode {i}", [
                str(bin_dir() / "flower-supernode"), *node_args, "--superlink", f"127.0.0.1:{link_port}",
                "--host", "127.0.0.1", "--port", str(port), "--max-wait-time", "120", "--node-config", node_config_text(config)],
                env, logs / f"supernode{i}.log", run.work)
        run_toml = run.work / "run-config.toml"
        run_toml.write_text(tomli_w.dumps({**run.run_config, **({"site-nodes": json.dumps(site_nodes)} if site_nodes else {})}))
        run.seconds["start"] = time.perf_counter() - begin
        submitted = _flwr(["run", str(run.app_dir), CONNECTION, "--format", "json", "--run-config", str(run_toml)], env, run.work)
        run.run_id = str(_json_out(submitted).get("run-id") or "")
        if not run.run_id:
            raise FedmlpError(f"flwr run did not start the run: {' '.join((submitted.stdout + submitted.stderr).split())[-400:]}")
        log.info("Flower run %s submitted to the SuperLink on 127.0.0.1:%d (%d SuperNodes; logs in %s)", run.run_id, link_port, n, logs)
        outcome = Path(run.run_config["out-federation"])
        deadline = time.monotonic() + run.timeout if run.timeout else None
        last_ls = time.monotonic()
        while True:
            processes.tree()
            processes.check()
            if outcome.exists() and json.loads(outcome.read_text()).get("status") in ("completed", "failed"):
                break
            if time.monotonic() - last_ls > 10:  # the ServerApp may have died before writing its outcome
                last_ls = time.monotonic()
                if run_status(env, run.work, run.run_id).startswith("finished"):
                    break
            if deadline is not None and time.monotonic() > deadline:
                _flwr(["stop", run.run_id, CONNECTION], env, run.work, timeout=60)
                raise FedmlpError(f"the run did not finish within --timeout {run.timeout:.0f} s (logs in {logs})")
            time.sleep(0.25)
        run.seconds["run"] = time.perf_counter() - begin - run.seconds["start"]
        for _ in range(40):  # the ServerApp returns right after writing; Flower marks the run finished
            run.status = run_status(env, run.work, run.run_id)
            if run.status.startswith("finished"):
                break
            time.sleep(0.5)
        try:
            shown = _flwr(["log", run.run_id, CONNECTION, "--show"], env, run.work, timeout=60)
            (logs / "serverapp.log").write_text(shown.stdout + shown.stderr)
        except subprocess.TimeoutExpired:
            log.warning("flwr log did not answer; the ServerApp's log is not in %s", logs)
    finally:
        with signals_deferred():
            stop_begin = time.perf_counter()
            processes.stop()
            run.seconds["stop"] = time.perf_counter() - stop_begin
    return run
