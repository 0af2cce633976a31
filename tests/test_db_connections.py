"""PostgreSQL connections stay bounded under ASGI (issue 17): several uvicorn workers, each
running sync views on a thread pool, hold at most DB_POOL_MAX_SIZE connections each (psycopg's
pool, tokenbill/settings.py), counted in pg_stat_activity by the product's application_name."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.test_make_run import _free_port

ROOT = Path(__file__).resolve().parent.parent
WORKERS, POOL_MAX = 3, 3

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL connections: needs DATABASE_URL "
                                                                 "(the PostgreSQL + Redis configuration)"),
    pytest.mark.django_db(transaction=True),
]


def _held(app_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app_name])
        return cursor.fetchone()[0]


async def _load(base: str, calls: int, concurrency: int) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async def one_by_one(n):
            for _ in range(n):
                # a sync API view that reads the database (the management token lookup)
                answer = await client.get("/api/v1/providers", headers={"Authorization": "Bearer tbm_nope"})
                statuses.append(answer.status_code)
        await asyncio.gather(*(one_by_one(calls // concurrency) for _ in range(concurrency)))
    return statuses


def test_connections_are_bounded_per_worker_under_load(tmp_path):
    # given several uvicorn workers of the product on the test database, with a small pool
    app_name = f"tokenbill-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    db = connection.settings_dict
    env = {**os.environ, "DEBUG": "1", "TOKENBILL_DATA_DIR": str(tmp_path), "DB_APPLICATION_NAME": app_name,
           "DB_POOL": "1", "DB_POOL_MAX_SIZE": str(POOL_MAX), "DJANGO_SETTINGS_MODULE": "tokenbill.settings",
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "tokenbill.asgi:application", "--port", str(port),
                               "--workers", str(WORKERS), "--lifespan", "on", "--log-level", "warning"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/console/login/", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.3)
        # when 160 database-reading API calls arrive, 16 at a time, spread over the workers
        statuses = asyncio.run(_load(f"http://127.0.0.1:{port}", 160, 16))
        held = _held(app_name)
        # then every call was answered (401: the token is unknown), and no worker holds more
        # connections than its pool allows (without the pool each thread kept one)
        assert statuses.count(401) == 160, set(statuses)
        assert 0 < held <= WORKERS * POOL_MAX, held
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
    # and they are given back when the workers stop
    deadline = time.monotonic() + 30
    while _held(app_name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _held(app_name) == 0
