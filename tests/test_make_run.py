"""`make run` end to end: the demo serves the console and the printed curl line, and
Ctrl-C takes every helper process with it.

Runs scripts/run.py (what `make run` runs once the virtualenv is installed) in place, with
a temporary data folder and free ports, and always on the embedded default (no
DATABASE_URL / REDIS_URL), as a newcomer's machine would.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to pid (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class OutputReader:
    """Drains the process's output on a thread (so its children never block on a full pipe)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._thread.start()

    def _drain(self, proc):
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, proc, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if line.startswith(marker)), None)
            if found:
                return found
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line starting with {marker!r} within {timeout}s; output:\n" + self.tail())

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])


def test_make_run_serves_the_demo_and_stops_cleanly(tmp_path):
    # given: a fresh data folder, free ports, the embedded default
    port, upstream_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "DJANGO_SETTINGS_MODULE", "PUBLIC_BASE_URL"}}
    env.update(PORT=str(port), FAKE_UPSTREAM_PORT=str(upstream_port), TOKENBILL_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # when
        output = OutputReader(proc)
        curl = output.wait_for(proc, "curl ", START_TIMEOUT)
        lines = list(output.lines)
        login = httpx.get(f"http://localhost:{port}/console/login/", timeout=10)
        call = subprocess.run([*shlex.split(curl), "-sS", "-o", str(tmp_path / "answer.json"), "-w", "%{http_code}"],
                              capture_output=True, text=True, timeout=30)
        children = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # then
    assert any(f"http://localhost:{port}/console/" in line for line in lines)
    assert any("demo@tokenbill.local" in line for line in lines)
    assert login.status_code == 200
    assert len(children) >= 3, children  # fake upstream, web server, celery worker
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
    assert proc.returncode == 0, output.tail()
    assert call.stdout == "200", (call.stdout, call.stderr, (tmp_path / "answer.json").read_text()[:500])
    assert "Hello, TokenBill!" in (tmp_path / "answer.json").read_text()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _celery_leader(run_pid: int) -> int | None:
    """The Celery worker scripts/run.py started (its own process group's leader)."""
    return next((pid for pid in _descendants(run_pid)
                 if "celery" in _cmdline(pid) and "worker" in _cmdline(pid) and os.getpgid(pid) == pid
                 and _alive(pid)), None)


def _wait(condition, timeout: float, what: str, output: OutputReader):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; output:\n" + output.tail())


def test_a_killed_worker_is_restarted_and_the_gateway_keeps_answering(tmp_path):
    # given `make run` on the embedded default
    port, upstream_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "DJANGO_SETTINGS_MODULE", "PUBLIC_BASE_URL"}}
    env.update(PORT=str(port), FAKE_UPSTREAM_PORT=str(upstream_port), TOKENBILL_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = OutputReader(proc)
        curl = output.wait_for(proc, "curl ", START_TIMEOUT)
        worker = _wait(lambda: _celery_leader(proc.pid), 30, "no celery worker", output)
        # when the worker dies (as it did on an unreadable message)
        os.killpg(worker, signal.SIGKILL)
        output.wait_for(proc, "run: celery exited", 30)
        # then the gateway still answers the demo call
        call = subprocess.run([*shlex.split(curl), "-sS", "-o", str(tmp_path / "answer.json"), "-w", "%{http_code}"],
                              capture_output=True, text=True, timeout=30)
        assert call.stdout == "200", (call.stdout, call.stderr)
        # and a new worker comes up
        output.wait_for(proc, "run: restarting celery", 30)
        restarted = _wait(lambda: _celery_leader(proc.pid), 30, "no restarted celery worker", output)
        assert restarted != worker and proc.poll() is None
        # and drains what was queued for it (tasks sent through the embedded broker)
        sender = subprocess.run(
            [sys.executable, "-c", "from tokenbill.celery import app\n"
             "for _ in range(20): app.send_task('billing.flush_request_logs')"],
            cwd=ROOT, env={**env, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "tokenbill.settings"},
            capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        queue = tmp_path / "celery" / "queue"
        _wait(lambda: not any(p.suffix == ".msg" for p in queue.iterdir()), 90, "queue not drained", output)
        assert _alive(restarted)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output.tail()


def test_make_run_target_runs_the_supervisor():
    result = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True)
    assert "scripts/run.py" in result.stdout


@pytest.mark.parametrize("name", ["PORT", "FAKE_UPSTREAM_PORT"])
def test_run_refuses_a_busy_port(tmp_path, name):
    # given
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**os.environ, "PORT": str(_free_port()), "FAKE_UPSTREAM_PORT": str(_free_port()),
               "TOKENBILL_DATA_DIR": str(tmp_path)}
        env[name] = str(busy.getsockname()[1])
        env.pop("DATABASE_URL", None)
        # when
        result = subprocess.run([sys.executable, "scripts/run.py"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
    # then
    assert result.returncode == 1 and name in result.stderr
