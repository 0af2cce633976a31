#!/usr/bin/env python
"""`make run`: the whole embedded TokenBill on one machine, in one command.

Steps: migrate, demo_setup, then start three helper processes and supervise them:

  * the fake upstream  (manage.py fake_upstream; a development tool, not a model)
  * the ASGI server    (uvicorn tokenbill.asgi:application: console, admin, API, gateway)
  * a Celery worker with beat (embedded filesystem broker, no server needed)

When the ports answer it prints the URLs, the demo login and a curl line. Ctrl-C or
SIGTERM stops everything: each child runs in its own process group, and the whole group
is terminated (then killed after a grace period), so nothing is left behind. A helper
that exits (the Celery worker, the fake upstream) is logged and restarted with back-off
(1 s doubling to 30 s, back to 1 s after a minute up); it never takes the gateway down.
Only the web server exiting stops everything (non-zero exit status).

Environment: PORT (8000), HOST (127.0.0.1), FAKE_UPSTREAM_PORT (8001), DEBUG (1 here),
plus everything tokenbill/settings.py reads (see README).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
GRACE_SECONDS = 10.0
RESTART_FIRST, RESTART_MAX, RESTART_RESET_AFTER = 1.0, 30.0, 60.0
ESSENTIAL = "web"  # the gateway itself; every other child is a helper, restarted


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    upstream_port = int(os.environ.get("FAKE_UPSTREAM_PORT", "8001"))
    env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "1"), "PYTHONUNBUFFERED": "1",
           "DJANGO_SETTINGS_MODULE": "tokenbill.settings"}
    env.setdefault("PUBLIC_BASE_URL", f"http://localhost:{port}")
    for port_in_use, name in ((port, "PORT"), (upstream_port, "FAKE_UPSTREAM_PORT")):
        if _answers("127.0.0.1", port_in_use):
            print(f"run: port {port_in_use} is already in use; set {name} to another port", file=sys.stderr)
            return 1

    # The embedded Celery broker (kombu's filesystem transport) needs its folders to exist.
    data_dir = Path(os.environ.get("TOKENBILL_DATA_DIR", str(ROOT / "data")))
    for folder in ("queue", "processed", "control"):
        (data_dir / "celery" / folder).mkdir(parents=True, exist_ok=True)

    _manage(env, "migrate", "--noinput", quiet=True)
    demo = _manage(env, "demo_setup", "--upstream-url", f"http://127.0.0.1:{upstream_port}/v1",
                   "--base-url", f"http://localhost:{port}")

    supervisor = Supervisor()
    signal.signal(signal.SIGINT, supervisor.on_signal)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    try:
        supervisor.start("fake-upstream", [PY, "manage.py", "fake_upstream", "--port", str(upstream_port)], env)
        supervisor.start("web", [PY, "-m", "uvicorn", "tokenbill.asgi:application", "--host", host,
                                 "--http", "tokenbill.server_protocol:HttpToolsProtocol",
                                 "--port", str(port), "--lifespan", "on", "--log-level", "info"], env)
        supervisor.start("celery", [PY, "-m", "celery", "-A", "tokenbill", "worker", "-B", "--pool=solo",
                                    # beat's every-5-seconds flush would bury the banner at "info"
                                    "-l", os.environ.get("CELERY_LOG_LEVEL", "warning")], env)
        supervisor.wait_for_ports([upstream_port, port])
        _banner(port, demo)
        return supervisor.watch()
    finally:
        supervisor.stop_all()


def _manage(env: dict, *args: str, quiet: bool = False) -> str:
    result = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"run: manage.py {args[0]} failed")
    if not quiet:
        return result.stdout
    return ""


def _answers(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _banner(port: int, demo: str) -> None:
    base = f"http://localhost:{port}"
    lines = [
        "",
        "TokenBill is running (Ctrl-C stops everything).",
        f"  Console:     {base}/console/",
        f"  Admin:       {base}/admin/",
        f"  API docs:    {base}/api/v1/docs",
        f"  Gateway:     {base}/<ve_id>/v1   (OpenAI-compatible base URL)",
        "",
        *[f"  {line}" for line in demo.strip().splitlines()[:-1]],
        "",
        "Try it:",
        demo.strip().splitlines()[-1],
        "",
    ]
    print("\n".join(lines), flush=True)


class Supervisor:
    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}
        self.specs: dict[str, tuple[list[str], dict]] = {}
        self.started_at: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self.restart_at: dict[str, float] = {}  # helpers waiting out their back-off
        self.stopping = False

    def start(self, name: str, argv: list[str], env: dict) -> None:
        # start_new_session: the child leads its own process group, so stop_all() can end
        # it and everything it forked (uvicorn reloaders, celery's beat) with one killpg.
        self.specs[name] = (argv, env)
        self.children[name] = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        self.started_at[name] = time.monotonic()

    def on_signal(self, signum, frame) -> None:
        self.stopping = True

    def wait_for_ports(self, ports: list[int], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.stopping:
                raise SystemExit(0)
            self._check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"run: nothing answered on port(s) {pending} after {timeout:.0f}s")
            pending = [p for p in pending if not _answers("127.0.0.1", p)]
            time.sleep(0.2)

    def watch(self) -> int:
        while not self.stopping:
            for name in self._exited():
                if name == ESSENTIAL:
                    print(f"run: {name} exited; stopping the others", file=sys.stderr)
                    return 1
                self._schedule_restart(name)
            now = time.monotonic()
            for name, when in list(self.restart_at.items()):
                if now >= when:
                    del self.restart_at[name]
                    print(f"run: restarting {name}", file=sys.stderr, flush=True)
                    self.start(name, *self.specs[name])
            time.sleep(0.3)
        print("\nrun: stopping…", flush=True)
        return 0

    def _schedule_restart(self, name: str) -> None:
        proc = self.children[name]
        _signal_group(proc, signal.SIGKILL)  # what it forked (beat) goes with it
        up = time.monotonic() - self.started_at[name]
        delay = RESTART_FIRST if up > RESTART_RESET_AFTER else self.backoff.get(name, RESTART_FIRST)
        self.backoff[name] = min(delay * 2, RESTART_MAX)
        self.restart_at[name] = time.monotonic() + delay
        print(f"run: {name} exited with status {proc.returncode} after {up:.0f}s; restarting it in {delay:.0f}s"
              " (the gateway keeps serving)", file=sys.stderr, flush=True)

    def _exited(self) -> list[str]:
        return [name for name, proc in self.children.items()
                if name not in self.restart_at and proc.poll() is not None]

    def _dead(self) -> str | None:
        return next((name for name, proc in self.children.items() if proc.poll() is not None), None)

    def _check_alive(self) -> None:
        dead = self._dead()
        if dead:
            raise SystemExit(f"run: {dead} exited during start-up (see its output above)")

    def stop_all(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in self.children.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.children.values():
            # Also reap grandchildren left in the group after its leader exited.
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
