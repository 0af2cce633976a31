"""REDIS_URL in every form the product supports, read alike by every Redis client in it
(tokenbill/redisconf.py): the gateway's own client (billing/resp.py), the Redis budget with
its leases, django-redis, and the Celery broker (kombu); against our own redis-server
processes over TLS, a unix socket and plain TCP (tests/fakes/redis_servers.py)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from asgiref.sync import sync_to_async

from billing.resp import FastRedis
from tests.fakes import redis_servers
from tokenbill import redisconf

ROOT = Path(__file__).resolve().parents[2]
ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    server = redis_servers.start(tmp_path_factory.mktemp("tls"), tls=True)
    yield server
    server.stop()


@pytest.fixture
def plain_redis(tmp_path):
    server = redis_servers.start(tmp_path / "plain", acl_user=("tbuser", "s@cret/1"))
    yield server
    server.stop()


def with_query(url: str, **changes) -> str:
    base, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    params.update(changes)
    return base + "?" + "&".join(f"{k}={v}" for k, v in params.items() if v is not None)


async def test_rediss_runs_scripts_over_tls_with_the_certificate_verified(tls_redis):
    # given the URL an operator writes for a managed Redis with in-transit encryption
    client = FastRedis(tls_redis.url)
    try:
        # when / then: scripts run over TLS (the server accepts nothing else: --port 0)
        assert await client.evalsha(ECHO, ["k"], ["tls"]) == [b"k", b"tls"]
    finally:
        client.close()


async def test_rediss_refuses_a_server_certificate_its_ca_did_not_sign(tls_redis):
    # given a CA that did not sign the server's certificate
    client = FastRedis(with_query(tls_redis.url, ssl_ca_certs=tls_redis.certs["other-ca"]))
    # then the connection is refused, not used unverified
    with pytest.raises(ssl.SSLCertVerificationError):
        await client.evalsha(ECHO, ["k"], ["x"])
    client.close()
    # and ssl_cert_reqs=none (the operator's explicit choice) connects without the CA
    lax = FastRedis(with_query(tls_redis.url, ssl_ca_certs=None, ssl_cert_reqs="none"))
    assert await lax.evalsha(ECHO, ["k"], ["lax"]) == [b"k", b"lax"]
    lax.close()


async def test_rediss_presents_the_client_certificate_from_the_url(tls_redis):
    # given the server requires a client certificate (tls-auth-clients yes) and the URL has none
    client = FastRedis(with_query(tls_redis.url, ssl_certfile=None, ssl_keyfile=None))
    # then the server refuses the connection: the certificate in the URL is what let the others in
    with pytest.raises(OSError):
        await client.evalsha(ECHO, ["k"], ["x"])
    client.close()


@pytest.mark.django_db(transaction=True)
async def test_reserve_settle_and_leases_over_rediss(tls_redis):
    from billing.budget_redis import RedisBudget
    from billing.ledger import ledger_sums
    from billing.models import LedgerEntry
    from tests.billing.conftest import close_sync_thread_connections, make_world
    from tests.billing.test_leases import biller_on, one_call

    # given a Redis budget with leases on the TLS server
    budget = RedisBudget(tls_redis.url, f"tbtls{uuid.uuid4().hex[:6]}:", leases=True)
    try:
        biller = biller_on(budget)
        world = await sync_to_async(make_world)(credits="1000000")
        snaps = await sync_to_async(world.snap)()
        # when calls reserve (the first takes a lease) and settle
        charges = [(await one_call(biller, world, snaps, output_tokens=20 + i)).charge for i in range(5)]
        await budget.release_leases()
        await biller.flush()
        # then every credit is counted in Redis and in the ledger alike
        counters = await budget.counters(world.ve.pk)
        ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
        assert all(charge > 0 for charge in charges)
        assert (counters.spend, counters.reserved) == (ledger_spend, 0) and ledger_spend == sum(charges)
        assert counters.budget == ledger_budget
        assert await LedgerEntry.objects.filter(virtual_endpoint_id=world.ve.pk, kind="charge").acount() == 5
    finally:
        budget.delete_all_keys()
        await asyncio.get_running_loop().run_in_executor(None, close_sync_thread_connections)


def test_django_cache_and_celery_broker_use_the_same_rediss_url(tls_redis):
    from django_redis.cache import RedisCache
    from kombu import Connection

    # given the settings every client derives from one REDIS_URL
    opts = redisconf.parse(tls_redis.url)
    broker_url, use_ssl = redisconf.celery_broker(tls_redis.url, opts)
    # then kombu is told to verify the certificate (it would not check it otherwise)
    assert use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    # and a message goes through the TLS broker
    with Connection(broker_url, ssl=use_ssl) as conn:
        queue = conn.SimpleQueue(f"tbtls{uuid.uuid4().hex[:6]}")
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    # and django-redis stores and reads over the same URL
    cache = RedisCache(tls_redis.url, {"KEY_PREFIX": "tbtls"})
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert tls_redis.admin.exists(":1:k".join(["tbtls", ""])) == 1


async def test_unix_socket_with_password_and_db(tmp_path):
    from kombu import Connection

    # given a Redis on a unix socket only, with a password
    server = redis_servers.start(tmp_path / "unix", unix=True, password="pw")
    sock = tmp_path / "unix" / "redis.sock"
    url = f"unix://:pw@{sock}?db=3"
    client = FastRedis(url)
    try:
        # when a command goes through the URL's socket and db
        await client.execute("SET", "tb:unix", "yes")
        # then it landed in db 3 of that server (not 127.0.0.1:6379, not db 0)
        db3 = redis.Redis(unix_socket_path=str(sock), password="pw", db=3)
        assert db3.get("tb:unix") == b"yes"
        assert server.admin.get("tb:unix") is None
        db3.close()
        # and the Celery broker reaches the same socket and db
        broker_url, use_ssl = redisconf.celery_broker(url, redisconf.parse(url))
        with Connection(broker_url, ssl=use_ssl) as conn:
            queue = conn.SimpleQueue("tbunix")
            queue.put("hello")
            message = queue.get(timeout=10)
            assert message.payload == "hello"
            message.ack()
            queue.close()
    finally:
        client.close()
        server.stop()


async def test_acl_user_with_password_and_db(plain_redis):
    # given an ACL user whose password needs escaping in a URL
    url = plain_redis.url.replace("redis://", "redis://tbuser:s%40cret%2F1@").replace("/0", "/2")
    client = FastRedis(url)
    try:
        await client.execute("SET", "tb:acl", "1")
        assert await client.execute("ACL", "WHOAMI") == b"tbuser"
        assert redis.Redis(host="127.0.0.1", port=plain_redis.port, db=2).get("tb:acl") == b"1"
    finally:
        client.close()


async def test_connection_killed_mid_command_fails_the_call_and_the_next_reconnects(plain_redis):
    client = FastRedis(plain_redis.url)
    await client.execute("PING")
    # given a command waiting for its reply
    pending = asyncio.ensure_future(client.execute("BLPOP", "tb:never", 0))
    others = [asyncio.ensure_future(client.evalsha(ECHO, ["k"], [str(i)])) for i in range(3)]
    while plain_redis.admin.client_list(_type="normal") == [] or not any(
            c.get("cmd") == "blpop" for c in plain_redis.admin.client_list(_type="normal")):
        await asyncio.sleep(0.01)
    # when the server kills the connection (as a failover or an idle-timeout does)
    plain_redis.admin.client_kill_filter(_type="normal", skipme=True)
    # then the waiting command and every one queued behind it fail at once
    for fut in (pending, *others):
        with pytest.raises(ConnectionError):
            await fut
    # and the next call gets a new connection
    assert await client.evalsha(ECHO, ["k"], ["again"]) == [b"k", b"again"]
    client.close()


async def test_a_connection_lost_before_the_command_is_queued_fails_it_at_once(plain_redis):
    # given a connection the caller got, then lost before it queued its command
    client = FastRedis(plain_redis.url)
    proto = await client._connection()
    proto.transport.abort()
    await asyncio.sleep(0)
    assert proto.lost
    # when the command is queued on it anyway
    fut = client._send(proto, [b"PING"])
    # then its future fails now (nobody would ever answer it)
    assert fut.done() and isinstance(fut.exception(), ConnectionError)
    assert await client.execute("PING") == b"PONG"
    client.close()


def _settings(env: dict, expression: str) -> subprocess.CompletedProcess:
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    clean = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "tokenbill.settings", **env})


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://s1:26379/mymaster", "Sentinel"),
    ("sentinel://s1:26379", "Sentinel"),
    ("redis://r:6379/0?cluster=true", "Cluster"),
    ("redis+cluster://r:6379", "Cluster"),
    ("rediss://r:6380/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    ("http://r:6379", "unsupported scheme"),
])
def test_unsupported_forms_stop_start_up_with_a_clear_message(url, words):
    result = _settings({"REDIS_URL": url}, "settings.REDIS_URL")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and words in result.stderr and "REDIS_URL" in result.stderr


def test_settings_give_celery_the_broker_redis_py_would_use(tmp_path):
    # when
    tls = _settings({"REDIS_URL": f"rediss://u:p@cache.example:6380/1?ssl_ca_certs={tmp_path}/ca.pem"},
                    "settings.CELERY_BROKER_URL, settings.CELERY_BROKER_USE_SSL")
    unix = _settings({"REDIS_URL": "unix://:pw@/run/redis/redis.sock?db=4"}, "settings.CELERY_BROKER_URL")
    # then
    assert tls.returncode == 0, tls.stderr
    assert tls.stdout.startswith("rediss://u:p@cache.example:6380/1 {") and "VerifyMode.CERT_REQUIRED" in tls.stdout
    assert f"{tmp_path}/ca.pem" in tls.stdout
    assert unix.stdout.strip() == "redis+socket://:pw@/run/redis/redis.sock?virtual_host=4", unix.stderr
