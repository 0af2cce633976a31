"""Billing on the hot path through the running gateway: a stream's charge in an SSE
comment before [DONE] (settled exactly once), and zero SQL on the request path with the
real biller on Redis counters (log rows are written by the writer thread, off the path)."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from django.db.backends.utils import CursorWrapper

from billing.models import LedgerEntry, RequestLog
from billing.money import format_credits
from tests.billing.test_gateway_billing import real_biller, upstream, world_for  # noqa: F401
from tests.gateway.conftest import live_gateway  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "hello"}]


def test_stream_sends_charge_and_balance_comment_before_done(live_gateway, real_biller, upstream):
    # given
    world = world_for(upstream)
    body = {"model": "chat", "stream": True, "messages": MSG}
    # when
    with httpx.Client(timeout=30) as http:
        resp = http.post(f"{live_gateway.url}/{world.ve.public_id}/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {world.secret}"})
    lines = [line for line in resp.text.split("\n") if line]
    real_biller.flush_sync()
    # then: the comment is the line just before [DONE], with the charge the ledger has
    assert lines[-1] == "data: [DONE]"
    assert lines[-2].startswith(": x-tokenbill-charge=")
    row = RequestLog.objects.get(request_id=resp.headers["x-tokenbill-request-id"])
    fields = dict(part.split("=") for part in lines[-2][2:].split(" "))
    assert row.charge > 0 and fields["x-tokenbill-charge"] == format_credits(row.charge)
    assert "x-tokenbill-balance" in fields
    assert LedgerEntry.objects.filter(idempotency_key=row.request_id).count() == 1


def test_stream_cut_by_the_client_is_settled_once(live_gateway, real_biller, upstream):
    # given
    world = world_for(upstream)
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/{world.ve.public_id}/v1", api_key=world.secret,
                        max_retries=0)
    # when: the client reads the first chunk and goes away
    stream = sdk.chat.completions.create(model="chat", messages=MSG, stream=True)
    next(iter(stream))
    stream.close()
    # then: exactly one request-log row and at most one ledger entry for it, nothing held
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        real_biller.flush_sync()
        rows = list(RequestLog.objects.filter(virtual_endpoint=world.ve))
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1
    assert LedgerEntry.objects.filter(idempotency_key=rows[0].request_id).count() == (1 if rows[0].charge else 0)


@pytest.mark.parametrize("real_biller", ["redis"], indirect=True)
def test_zero_sql_on_the_request_path_with_the_real_biller(live_gateway, real_biller, upstream, monkeypatch):
    # given a warm gateway with billing on Redis counters (rates kept as in production:
    # reloaded on a config change, else every RATES_MAX_AGE seconds)
    from billing.biller import RATES_MAX_AGE

    real_biller.rates.max_age = RATES_MAX_AGE
    world = world_for(upstream)
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/{world.ve.public_id}/v1", api_key=world.secret,
                        max_retries=0)
    sdk.chat.completions.create(model="chat", messages=MSG)
    list(sdk.chat.completions.create(model="chat", messages=MSG, stream=True))
    seen: list[str] = []
    original = CursorWrapper._execute_with_wrappers

    def spy(self, sql, params, many, executor):
        name = threading.current_thread().name
        # the log writer's thread and the routing cache's poller are off the request path
        if not name.startswith(("tokenbill-log-writer", "tb-routing-cache")) and name != "MainThread":
            seen.append(f"{name}: {sql}")
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", spy)
    # when
    for _ in range(5):
        sdk.chat.completions.create(model="chat", messages=MSG)
        list(sdk.chat.completions.create(model="chat", messages=MSG, stream=True))
    # then
    assert seen == []
