"""billing/bulk.py's executemany INSERT stores exactly what QuerySet.bulk_create stores
(the request-log writer switched to it for speed), on whichever database the run uses."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import transaction
from django.forms.models import model_to_dict

from billing.bulk import insert_rows
from billing.models import LedgerEntry, RequestLog
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def _row(ve, key, request_id, **kw):
    return dict(
        request_id=request_id, organization_id=ve.organization_id, virtual_endpoint_id=ve.pk, access_key_id=key.pk,
        run_id="run-7", endpoint="chat.completions", logical_model_name="chät", stream=True, status="ok",
        http_status=200, attempts=[{"physical_model_id": 3, "status": 200, "latency_ms": 12, "note": "é"}],
        input_tokens=11, cached_input_tokens=2, cache_creation_tokens=1, output_tokens=40, images=0,
        audio_seconds=Decimal("1.250"), usage_estimated=False, cost=Decimal("0.0000123456"), cost_currency="USD",
        cost_credits=1234, charge=2468, price_snapshot={"input": "1.5", "rate": "100", "nested": {"n": [1, 2]}},
        client_disconnected=False, started_at=datetime(2026, 11, 24, 5, 30, 1, 123456, tzinfo=UTC),
        latency_ms=15, ttfb_ms=None, **kw)


def _stored(model, **lookup):
    found = model_to_dict(model.objects.get(**lookup))
    found.pop("id")
    return found


def test_a_request_log_row_is_stored_as_bulk_create_stores_it():
    # given the same row written both ways
    org = factories.make_org()
    ve = factories.make_ve(org)
    key, _ = factories.make_key(ve)
    RequestLog.objects.bulk_create([RequestLog(**_row(ve, key, "via-orm"))])
    # when
    insert_rows(RequestLog, [_row(ve, key, "via-bulk")])
    # then every field reads back the same (request id aside)
    orm, fast = _stored(RequestLog, request_id="via-orm"), _stored(RequestLog, request_id="via-bulk")
    assert fast.pop("request_id") == "via-bulk" and orm.pop("request_id") == "via-orm"
    assert fast == orm
    assert fast["price_snapshot"]["nested"] == {"n": [1, 2]}
    assert fast["cost"] == Decimal("0.0000123456") and fast["started_at"].microsecond == 123456


def test_missing_fields_take_their_defaults_and_auto_now_add_is_now():
    org = factories.make_org()
    ve = factories.make_ve(org)
    before = datetime.now(UTC)
    # when a ledger entry is written with only the required fields
    insert_rows(LedgerEntry, [dict(virtual_endpoint_id=ve.pk, kind="charge", amount=5, idempotency_key="k-1")])
    # then
    entry = LedgerEntry.objects.get(idempotency_key="k-1")
    assert (entry.note, entry.request_id, entry.rate_snapshot, entry.access_key_id) == ("", "", {}, None)
    assert entry.created_at >= before.replace(microsecond=0)


def test_ignore_conflicts_skips_duplicates_and_keeps_the_first():
    org = factories.make_org()
    ve = factories.make_ve(org)
    key, _ = factories.make_key(ve)
    insert_rows(RequestLog, [_row(ve, key, "dup")], ignore_conflicts=True)
    # when the same request id comes again, with another in the batch
    insert_rows(RequestLog, [dict(_row(ve, key, "dup"), charge=1), _row(ve, key, "new")], ignore_conflicts=True)
    # then
    assert RequestLog.objects.get(request_id="dup").charge == 2468
    assert RequestLog.objects.count() == 2


def test_without_ignore_conflicts_a_duplicate_fails_the_whole_batch():
    from django.db import IntegrityError

    org = factories.make_org()
    ve = factories.make_ve(org)
    insert_rows(LedgerEntry, [dict(virtual_endpoint_id=ve.pk, kind="charge", amount=5, idempotency_key="same")])
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(LedgerEntry, [dict(virtual_endpoint_id=ve.pk, kind="charge", amount=6, idempotency_key="other"),
                                  dict(virtual_endpoint_id=ve.pk, kind="charge", amount=7, idempotency_key="same")])
    assert list(LedgerEntry.objects.values_list("amount", flat=True)) == [5]


def test_an_unknown_key_is_an_error_not_a_silent_drop():
    with pytest.raises(TypeError, match="no field"):
        insert_rows(LedgerEntry, [dict(virtual_endpoint_id=1, kind="charge", amount=5, idempotency_key="x", oops=1)])


def test_flush_waits_for_a_batch_the_timer_is_writing(transactional_db):
    # given a writer whose timer took the buffer and is still writing it
    import asyncio
    import threading
    import time
    import uuid
    from datetime import UTC, datetime

    from billing.models import RequestLog
    from billing.requestlog import LogWriter
    from tests import factories

    class SlowWriter(LogWriter):
        def _write(self, rows, charges):
            time.sleep(0.3)
            super()._write(rows, charges)

    ve = factories.make_ve(factories.make_org())
    writer = SlowWriter(interval=3600)
    writer.add(row=dict(request_id=uuid.uuid4().hex, organization_id=ve.organization_id, virtual_endpoint_id=ve.pk,
                        endpoint="chat.completions", started_at=datetime.now(UTC)))
    timer = threading.Thread(target=writer.flush_sync)
    timer.start()
    time.sleep(0.05)
    assert writer.pending() == 0  # taken by the "timer"
    # when a caller flushes, then the batch in flight is in the database afterwards
    asyncio.run(writer.flush())
    assert RequestLog.objects.filter(virtual_endpoint=ve).count() == 1
    timer.join()
