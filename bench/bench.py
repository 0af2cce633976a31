"""Gateway overhead benchmark (`make bench`).

Starts the fast fake upstream (manage.py fake_upstream) and the gateway (uvicorn, ONE
worker, uvloop + httptools) in front of it, on a throw-away SQLite database (and Redis
for billing's counters when one answers on REDIS_URL or 127.0.0.1:6379), then loads both
with wrk: non-stream at c=1/16/64, stream at c=1/16. For each case it prints requests/s,
p50/p99 latency and CPU ms per request of the gateway process and of the fake upstream
called directly, the added p50, and streaming time-to-first-byte (sequential, c=1).

    BENCH_DURATION=5      seconds per case
    BENCH_BILLING=on|off|both   the real biller (default), NullBiller, or both runs
    BENCH_APP=module:app        serve another ASGI app (diagnostics, e.g. a budget without Redis)
    BENCH_PROFILE=1|stream      cProfile the gateway under c=16 instead (prints the top functions)
    BENCH_CASES=non-stream:1,stream:1   only these cases (default: all five)
    BENCH_PROFILE=py-spy        sample every thread of the gateway with py-spy under load
                                (BENCH_CONNS=16, BENCH_STREAM=0|1)
                                (bench/pyspy_top.py prints the top; `pip install py-spy` first)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
PROFILE = os.environ.get("BENCH_PROFILE", "")  # "1" or "stream": cProfile the gateway at c=16 only
PYSPY = PROFILE == "py-spy"
CASES = [("non-stream", 1), ("non-stream", 16), ("non-stream", 64), ("stream", 1), ("stream", 16)]
if os.environ.get("BENCH_CASES"):  # e.g. "non-stream:1,stream:1": a quicker subset
    CASES = [(kind, int(conns)) for kind, _, conns in (c.partition(":") for c in os.environ["BENCH_CASES"].split(","))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if url or os.environ.get("BENCH_REDIS") == "0":
        return url
    try:
        socket.create_connection(("127.0.0.1", 6379), 0.2).close()
        return "redis://127.0.0.1:6379/0"
    except OSError:
        return ""


def bench_env(tmp: str) -> dict:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(TOKENBILL_DATA_DIR=tmp, SECRET_KEY=secrets.token_urlsafe(48), DEBUG="0",
               FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(), LOG_LEVEL="WARNING",
               DJANGO_SETTINGS_MODULE="tokenbill.settings", REDIS_PREFIX=f"tbbench{os.getpid()}:",
               REDIS_URL=redis_url(), PYTHONUNBUFFERED="1", CHECKOUT_TEST_MODE="0")
    return env


def wrk(url: str, key: str, model: str, conns: int, stream: bool, duration: int) -> dict:
    env = {**os.environ, "BENCH_KEY": key, "BENCH_MODEL": model, "BENCH_STREAM": "1" if stream else "0"}
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(ROOT / "bench/chat.lua"),
                          url], capture_output=True, text=True, env=env, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCHJSON "))
    return json.loads(line[len("BENCHJSON "):])


TTFB_N = int(os.environ.get("BENCH_TTFB_N", "1500"))


async def ttfb(direct: tuple[str, str, str], gateway: tuple[str, str, str], n: int = TTFB_N) -> tuple[float, ...]:
    """Median time to the first streamed body byte, sequential requests, of the fake upstream
    called directly, of the gateway (chat completions) and of the gateway's /v1/messages
    (Anthropic's format, translated over the same chat path), alternately: the medians see
    the same moments of a noisy machine (measured one after the other, the direct median
    alone moved by 0.1 ms)."""
    import aiohttp

    async def one(session, url, key, model, messages_api: bool = False) -> float:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}
        if messages_api:
            url, body["max_tokens"] = url.replace("/chat/completions", "/messages"), 64
        started = time.perf_counter()
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.content.readany()
            elapsed = time.perf_counter() - started
            await resp.read()
        return elapsed

    samples: tuple[list, list, list] = ([], [], [])
    async with aiohttp.ClientSession() as s_direct, aiohttp.ClientSession() as s_gateway:
        for i in range(n + 30):
            d, g = await one(s_direct, *direct), await one(s_gateway, *gateway)
            m = await one(s_gateway, *gateway, messages_api=True)
            if i >= 30:
                samples[0].append(d)
                samples[1].append(g)
                samples[2].append(m)
    return tuple(sorted(x)[len(x) // 2] * 1000 for x in samples)


def measure(label: str, url: str, key: str, model: str, pids: dict[str, int], duration: int) -> dict:
    results = {}
    for kind, conns in CASES:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        r = wrk(url, key, model, conns, kind == "stream", duration)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["cpu_ms"] = {name: (after[name] - before[name]) * 1000 / max(r["requests"], 1) for name in pids}
        results[(kind, conns)] = r
    return results


def run_once(billing: bool, duration: int) -> None:
    tmp = tempfile.mkdtemp(prefix="tokenbill-bench-")
    env = bench_env(tmp)
    fake_port, gw_port = free_port(), free_port()
    procs = []
    try:
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        key = subprocess.run([PY, "bench/setup_world.py", f"http://127.0.0.1:{fake_port}/v1"], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        fake = subprocess.Popen([PY, "manage.py", "fake_upstream", "--port", str(fake_port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        procs.append(fake)
        app = os.environ.get("BENCH_APP") or ("tokenbill.asgi:application" if billing else "bench.null_billing_asgi:application")
        if PROFILE and not PYSPY and PROFILE != "strace":  # cProfile the gateway (bench/profile_gateway.py prints the top on SIGTERM)
            cmd = [PY, "bench/profile_gateway.py", str(gw_port), "0"]
            env = {**env, "BENCH_BILLING": "on" if billing else "off"}
        else:
            cmd = [PY, "-m", "uvicorn", app, "--port", str(gw_port), "--workers", "1", "--loop", "uvloop",
                   "--http", os.environ.get("BENCH_HTTP", "tokenbill.server_protocol:HttpToolsProtocol"), "--no-access-log", "--log-level", "warning"]
        gw = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        procs.append(gw)
        wait_port(fake_port)
        wait_port(gw_port)
        gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        direct_url = f"http://127.0.0.1:{fake_port}/v1/chat/completions"
        wrk(gw_url, key, "bench", 4, False, 2)  # warm-up: snapshot, pools, billing caches
        wrk(direct_url, "sk-bench", "fake-model", 4, False, 1)
        pids = {"gateway": gw.pid, "upstream": fake.pid}
        redis_pid = local_redis_pid(env["REDIS_URL"]) if billing else None
        if redis_pid:
            pids["redis"] = redis_pid
        if PYSPY:
            out = Path(tmp) / "pyspy.txt"
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(PY).parent / "py-spy"), "record", "-p",
                                    str(gw.pid), "-d", str(duration), "-r", "250", *os.environ.get("BENCH_PYSPY_FLAGS", "--threads --gil --nonblocking").split(), "-f", "raw",
                                    "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            conns, stream = int(os.environ.get("BENCH_CONNS", "16")), os.environ.get("BENCH_STREAM") == "1"
            r = wrk(gw_url, key, "bench", conns, stream, duration)
            spy.wait(30)
            print(f"gateway c={conns}{' stream' if stream else ''}: {r['requests'] / (r['duration_us'] / 1e6):,.0f} "
                  "req/s during sampling")
            subprocess.run([PY, str(ROOT / "bench/pyspy_top.py"), str(out)], check=True)
            if os.environ.get("BENCH_PYSPY_KEEP"):
                shutil.copy(out, os.environ["BENCH_PYSPY_KEEP"])
            return
        if PROFILE == "strace":  # system calls per request of the gateway (all threads), c=1
            conns, stream = int(os.environ.get("BENCH_CONNS", "1")), os.environ.get("BENCH_STREAM") == "1"
            tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(gw.pid)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            r = wrk(gw_url, key, "bench", conns, stream, duration)
            tracer.send_signal(signal.SIGINT)
            table = tracer.communicate(timeout=30)[1]
            print(f"gateway system calls per request (c={conns}{' stream' if stream else ''}, {r['requests']} requests):")
            for line in table.splitlines():
                cols = line.split()
                if len(cols) >= 5 and cols[3].isdigit():
                    print(f"  {cols[-1]:<16} {int(cols[3]) / max(r['requests'], 1):7.2f}")
            return
        if PROFILE:
            wrk(gw_url, key, "bench", int(os.environ.get("BENCH_CONNS", "16")), PROFILE == "stream", duration)
            return
        direct = measure("direct", direct_url, "sk-bench", "fake-model", {"upstream": fake.pid}, duration)
        via = measure("gateway", gw_url, key, "bench", pids, duration)
        rss_mb = int(Path(f"/proc/{gw.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        t_direct, t_gw, t_msg = asyncio.run(ttfb((direct_url, "sk-bench", "fake-model"), (gw_url, key, "bench")))
        report(billing, env["REDIS_URL"], direct, via, rss_mb, t_direct, t_gw, t_msg)
        if billing and env["REDIS_URL"]:  # the rows the gateway spooled to Redis, as Celery writes them
            subprocess.run([PY, "bench/drain.py"], cwd=ROOT, env=env, check=True)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60 if PROFILE else 10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        cleanup_redis(env)
        shutil.rmtree(tmp, ignore_errors=True)


def local_redis_pid(url: str) -> int | None:
    """redis-server's pid when it runs on this machine (its CPU per call is reported too)."""
    if not url:
        return None
    import redis

    try:
        pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    except Exception:
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None


def cleanup_redis(env: dict) -> None:
    if not env["REDIS_URL"]:
        return
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    keys = list(client.scan_iter(match=env["REDIS_PREFIX"] + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def report(billing, redis, direct, via, rss_mb, t_direct, t_gw, t_msg) -> None:
    print(f"\n== gateway (1 uvicorn worker) vs fake upstream direct; billing {'ON' if billing else 'OFF'}"
          f"{' (Redis counters)' if billing and redis else ' (SQL counters)' if billing else ''} ==")
    print(f"{'case':<16}{'direct req/s':>13}{'p50 ms':>8}{'p99 ms':>8}{'cpu ms/req':>11} |"
          f"{'gateway req/s':>14}{'p50 ms':>8}{'p99 ms':>8}{'gw cpu ms/req':>14}{'up cpu ms/req':>14}{'added p50':>11}")
    for case in CASES:
        d, g = direct[case], via[case]
        print(f"{case[0] + ' c=' + str(case[1]):<16}{d['rps']:>13,.0f}{d['p50_us'] / 1000:>8.2f}{d['p99_us'] / 1000:>8.2f}"
              f"{d['cpu_ms']['upstream']:>11.3f} |{g['rps']:>14,.0f}{g['p50_us'] / 1000:>8.2f}{g['p99_us'] / 1000:>8.2f}"
              f"{g['cpu_ms']['gateway']:>14.3f}{g['cpu_ms']['upstream']:>14.3f}{(g['p50_us'] - d['p50_us']) / 1000:>10.2f}"
              + (f"  errors={g['errors'] + g['non2xx']}" if g["errors"] or g["non2xx"] else ""))
    if any("redis" in via[case]["cpu_ms"] for case in CASES):
        print("redis-server cpu ms/req: " + ", ".join(
            f"{case[0]} c={case[1]} {via[case]['cpu_ms']['redis']:.3f}" for case in CASES if "redis" in via[case]["cpu_ms"]))
    print(f"stream TTFB p50 (c=1): direct {t_direct:.2f} ms, gateway {t_gw:.2f} ms, added {t_gw - t_direct:.2f} ms")
    print(f"/v1/messages stream TTFB p50 (c=1): {t_msg:.2f} ms, {t_msg - t_gw:+.3f} ms vs the chat stream")
    print(f"gateway resident memory after the run: {rss_mb:.0f} MB")


def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed (bench/run.sh installs it with apt-get)")
    duration = int(os.environ.get("BENCH_DURATION", "5"))
    mode = os.environ.get("BENCH_BILLING", "both")
    for billing in {"on": [True], "off": [False]}.get(mode, [False, True]):
        run_once(billing, duration)


if __name__ == "__main__":
    main()
