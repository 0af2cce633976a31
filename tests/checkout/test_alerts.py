import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail

from billing.alerts import check_low_balance
from billing.ledger import post_entry
from routing.models import Role, VirtualEndpoint
from tests import factories

CREDIT = 1_000_000


@pytest.fixture
def hook_server(settings):
    """A merchant's alert endpoint on 127.0.0.1 that records what it receives; private
    webhook targets are allowed for it (tokenbill/netguard.py refuses them by default)."""
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"body": body, "signature": self.headers.get("X-TokenBill-Signature", "")})
            self.send_response(204)
            self.end_headers()

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def _charge(ve, credits: int, key: str) -> None:
    post_entry(virtual_endpoint=ve, kind="charge", amount=credits * CREDIT, idempotency_key=key)


def _alert_mails():
    return [m for m in mail.outbox if "Low balance" in m.subject]


def test_low_balance_alert_is_sent_once_and_rearmed_when_the_balance_rises(org, hook_server,
                                                                            django_capture_on_commit_callbacks):
    # given an org with an owner, an admin, a developer, and a webhook
    url, received = hook_server
    org.alert_webhook_url, org.alert_webhook_secret = url, "alert-secret"
    org.save()
    owner = factories.make_member(org, Role.OWNER).user
    admin = factories.make_member(org, Role.ADMIN).user
    factories.make_member(org, Role.DEVELOPER)
    ve = factories.make_ve(org, name="Alerted", credits=100, low_balance_threshold=20 * CREDIT)
    # when charges take the balance below the threshold, and further down
    with django_capture_on_commit_callbacks(execute=True):
        _charge(ve, 50, "c1")  # 50 left: above
    assert _alert_mails() == []
    with django_capture_on_commit_callbacks(execute=True):
        _charge(ve, 35, "c2")  # 15 left: below -> alert
    with django_capture_on_commit_callbacks(execute=True):
        _charge(ve, 5, "c3")  # 10 left: still below -> no repeat
    # then one email to owners and admins only, and one signed webhook
    [alert] = _alert_mails()
    assert sorted(alert.to) == sorted([owner.email, admin.email])
    assert "15 credits left" in alert.subject and "/checkout?ve_id=" in alert.body
    [hook] = received
    payload = json.loads(hook["body"])
    assert payload["type"] == "virtual_endpoint.low_balance" and payload["balance"] == "15"
    ts, sig = (part.split("=", 1)[1] for part in hook["signature"].split(","))
    expected = hmac.new(b"alert-secret", f"{ts}.".encode() + hook["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig, expected)
    assert VirtualEndpoint.objects.get(pk=ve.pk).low_balance_alerted
    # when a top-up lifts the balance above the threshold, and it falls again
    with django_capture_on_commit_callbacks(execute=True):
        factories.grant(ve, 100)  # 110
    assert not VirtualEndpoint.objects.get(pk=ve.pk).low_balance_alerted
    with django_capture_on_commit_callbacks(execute=True):
        _charge(ve, 100, "c4")  # 10 again
    # then a second alert
    assert len(_alert_mails()) == 2
    assert len(received) == 2


def test_threshold_zero_never_alerts(org):
    factories.make_member(org, Role.OWNER)
    ve = factories.make_ve(org, credits=1)
    assert check_low_balance(ve.pk) is False
    assert _alert_mails() == []


def test_check_low_balance_uses_the_balance_the_caller_knows(org):
    # given the gateway's counters know a lower balance than the SQL row (settle batches lag)
    factories.make_member(org, Role.OWNER)
    ve = factories.make_ve(org, credits=100, low_balance_threshold=20 * CREDIT)
    # when the billing settle path reports it
    assert check_low_balance(ve.pk, balance=5 * CREDIT) is True
    assert check_low_balance(ve.pk, balance=4 * CREDIT) is False
    # then one alert
    assert len(_alert_mails()) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_crossings_alert_once(org):
    from django.db import connection

    factories.make_member(org, Role.OWNER)
    ve = factories.make_ve(org, credits=100, low_balance_threshold=20 * CREDIT)
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def cross():
        try:
            barrier.wait()
            results.append(check_low_balance(ve.pk, balance=1 * CREDIT))
        finally:
            connection.close()

    threads = [threading.Thread(target=cross) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(True) == 1
    assert len(_alert_mails()) == 1


def test_unreachable_merchant_webhook_does_not_break_the_post(org, settings, django_capture_on_commit_callbacks):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True  # so the post is tried and fails to connect
    org.alert_webhook_url = "http://127.0.0.1:9/unreachable"
    org.save()
    factories.make_member(org, Role.OWNER)
    ve = factories.make_ve(org, credits=100, low_balance_threshold=20 * CREDIT)
    with django_capture_on_commit_callbacks(execute=True):
        _charge(ve, 90, "c1")
    assert len(_alert_mails()) == 1
    ve.refresh_from_db()
    assert ve.balance == 10 * CREDIT
