import threading
import time

import pytest
from django.core import mail
from django.db import connection

from billing import payments
from billing.models import Payment, PaymentStatus, StripeEvent
from tests.checkout.helpers import deliver, event_for, start_stripe_payment, top_ups
from tests.fakes.stripe_server import make_event, sign_payload

COMPLETED = "checkout.session.completed"
FIVE_M_CREDITS = 5_000_000 * 1_000_000


def _balance(ve) -> int:
    ve.refresh_from_db()
    return ve.balance


def test_paid_session_completed_credits_the_ve_once_and_records_the_event(stripe_on, ve):
    # given
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id)
    body = event_for(stripe_on, COMPLETED, payment.stripe_session_id, event_id="evt_paid_1")
    # when
    response = deliver(body)
    # then
    assert response.status_code == 200
    assert _balance(ve) == before + FIVE_M_CREDITS
    [entry] = top_ups(ve)
    assert entry.idempotency_key == f"stripe:checkout-session:{payment.stripe_session_id}"
    assert entry.payment_id == payment.pk
    assert entry.rate_snapshot["credits_per_unit"] == "100000.00000000"
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PAID
    assert payment.stripe_payment_intent_id.startswith("pi_test_")
    assert StripeEvent.objects.get(event_id="evt_paid_1").handling == StripeEvent.Handling.PROCESSED


def test_same_event_delivered_five_times_sequentially_posts_one_entry(stripe_on, ve):
    # given
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id)
    body = event_for(stripe_on, COMPLETED, payment.stripe_session_id, event_id="evt_seq")
    # when
    statuses = [deliver(body).status_code for _ in range(5)]
    # then
    assert statuses == [200] * 5
    assert len(top_ups(ve)) == 1
    assert _balance(ve) == before + FIVE_M_CREDITS
    assert StripeEvent.objects.filter(event_id="evt_seq").count() == 1


@pytest.mark.django_db(transaction=True)
def test_same_event_delivered_five_times_concurrently_posts_one_entry(stripe_on, ve):
    # given one paid session, delivered as the same event and as a second, distinct event
    # (Stripe may send checkout.session.completed and our catch-up may race it)
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id)
    body = event_for(stripe_on, COMPLETED, payment.stripe_session_id, event_id="evt_conc")
    barrier = threading.Barrier(5)
    statuses: list[int] = []

    def redeliver():
        try:
            barrier.wait()
            statuses.append(deliver(body).status_code)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=redeliver) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # then
    assert sorted(statuses) == [200] * 5
    assert len(top_ups(ve)) == 1
    assert _balance(ve) == before + FIVE_M_CREDITS
    assert StripeEvent.objects.get(event_id="evt_conc").handling == StripeEvent.Handling.PROCESSED


@pytest.mark.django_db(transaction=True)
def test_concurrent_distinct_events_for_one_session_credit_once(stripe_on, ve):
    # given completed and async_payment_succeeded both arrive at once for a paid session
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id)
    bodies = [event_for(stripe_on, COMPLETED, payment.stripe_session_id) for _ in range(3)] + [
        event_for(stripe_on, "checkout.session.async_payment_succeeded", payment.stripe_session_id) for _ in range(2)
    ]
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def send(body):
        try:
            barrier.wait()
            statuses.append(deliver(body).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 5
    assert len(top_ups(ve)) == 1
    assert _balance(ve) == before + FIVE_M_CREDITS


def test_completed_unpaid_then_async_payment_succeeded_credits_once(stripe_on, ve):
    # given a bank debit: the session completes before the money arrives
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id, paid=False)
    # when
    first = deliver(event_for(stripe_on, COMPLETED, payment.stripe_session_id))
    # then nothing is credited yet
    assert first.status_code == 200
    assert top_ups(ve) == []
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.PENDING
    # when the money arrives (and the event is redelivered)
    stripe_on.pay_async(payment.stripe_session_id)
    succeeded = event_for(stripe_on, "checkout.session.async_payment_succeeded", payment.stripe_session_id)
    assert deliver(succeeded).status_code == 200
    assert deliver(succeeded).status_code == 200
    # then
    assert len(top_ups(ve)) == 1
    assert _balance(ve) == before + FIVE_M_CREDITS


def test_async_payment_failed_and_expired_mark_the_payment_and_credit_nothing(stripe_on, ve):
    failed = start_stripe_payment(ve, 1000)
    expired = start_stripe_payment(ve, 1000)
    stripe_on.complete(failed.stripe_session_id, paid=False)
    stripe_on.expire(expired.stripe_session_id)
    assert deliver(event_for(stripe_on, "checkout.session.async_payment_failed", failed.stripe_session_id)).status_code == 200
    assert deliver(event_for(stripe_on, "checkout.session.expired", expired.stripe_session_id)).status_code == 200
    assert Payment.objects.get(pk=failed.pk).status == PaymentStatus.FAILED
    assert Payment.objects.get(pk=expired.pk).status == PaymentStatus.EXPIRED
    assert top_ups(ve) == []


def _paid_event(stripe_on, ve) -> bytes:
    payment = start_stripe_payment(ve, 5000)
    stripe_on.complete(payment.stripe_session_id)
    return event_for(stripe_on, COMPLETED, payment.stripe_session_id, event_id="evt_attack")


@pytest.mark.parametrize(
    "attack",
    ["unsigned", "wrong_secret", "stale", "tampered", "garbage_header"],
)
def test_unverifiable_events_are_rejected_and_change_nothing(stripe_on, ve, attack):
    # given a genuine paid session, and an event about it that does not verify
    body = _paid_event(stripe_on, ve)
    before = _balance(ve)
    if attack == "unsigned":
        response = deliver(body, signature="")
    elif attack == "wrong_secret":
        response = deliver(body, secret="whsec_forged")
    elif attack == "stale":
        response = deliver(body, signature=sign_payload(body, "whsec_test_secret_for_checkout_tests",
                                                       timestamp=int(time.time()) - 301))
    elif attack == "tampered":
        signature = sign_payload(body, "whsec_test_secret_for_checkout_tests")
        response = deliver(body.replace(b'"amount_total": 5000', b'"amount_total": 500000'), signature=signature)
    else:
        response = deliver(body, signature="v1=deadbeef")
    # then
    assert response.status_code == 400, attack
    assert not StripeEvent.objects.exists()
    assert top_ups(ve) == []
    assert _balance(ve) == before
    # and the genuine delivery still works afterwards
    assert deliver(body).status_code == 200
    assert len(top_ups(ve)) == 1


def test_webhook_without_a_configured_secret_refuses_everything(stripe_on, ve, settings):
    body = _paid_event(stripe_on, ve)
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert deliver(body, secret="").status_code == 400
    assert top_ups(ve) == []


def test_mismatched_amount_credits_nothing_and_marks_the_event_failed(stripe_on, ve):
    # given Stripe reports a different amount than we quoted (e.g. the session was edited)
    payment = start_stripe_payment(ve, 5000)
    session = stripe_on.complete(payment.stripe_session_id)
    session["amount_total"] = 50
    body = make_event(COMPLETED, session, event_id="evt_mismatch")
    # when
    response = deliver(body)
    # then
    assert response.status_code == 200  # a retry would not change the facts
    assert top_ups(ve) == []
    event = StripeEvent.objects.get(event_id="evt_mismatch")
    assert event.handling == StripeEvent.Handling.FAILED
    assert "amount mismatch" in event.error
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.FAILED


def test_mismatched_currency_credits_nothing(stripe_on, ve):
    payment = start_stripe_payment(ve, 5000)
    session = stripe_on.complete(payment.stripe_session_id)
    session["currency"] = "jpy"
    assert deliver(make_event(COMPLETED, session)).status_code == 200
    assert top_ups(ve) == []


def test_crediting_failure_answers_5xx_then_the_redelivery_credits_once(stripe_on, ve, monkeypatch):
    # given the ledger fails once (a deadlock, a lost connection)
    payment = start_stripe_payment(ve, 5000)
    before = _balance(ve)
    stripe_on.complete(payment.stripe_session_id)
    body = event_for(stripe_on, COMPLETED, payment.stripe_session_id, event_id="evt_retry")
    real_post_entry = payments.post_entry
    calls = {"n": 0}

    def flaky_post_entry(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database went away")
        return real_post_entry(**kwargs)

    monkeypatch.setattr(payments, "post_entry", flaky_post_entry)
    # when
    first = deliver(body)
    # then Stripe is told to retry, and nothing moved
    assert first.status_code == 500
    assert top_ups(ve) == []
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.PENDING
    assert StripeEvent.objects.get(event_id="evt_retry").handling == StripeEvent.Handling.FAILED
    # when Stripe redelivers (twice, for good measure)
    assert deliver(body).status_code == 200
    assert deliver(body).status_code == 200
    # then
    assert len(top_ups(ve)) == 1
    assert _balance(ve) == before + FIVE_M_CREDITS
    assert StripeEvent.objects.get(event_id="evt_retry").handling == StripeEvent.Handling.PROCESSED


def test_webhook_that_beats_the_session_id_write_finds_the_payment_by_reference(stripe_on, ve):
    # given the webhook arrives before checkout_start stored the session id
    payment = start_stripe_payment(ve, 5000)
    session_id = payment.stripe_session_id
    Payment.objects.filter(pk=payment.pk).update(stripe_session_id=None)
    stripe_on.complete(session_id)
    # when
    assert deliver(event_for(stripe_on, COMPLETED, session_id)).status_code == 200
    # then
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PAID and payment.stripe_session_id == session_id
    assert len(top_ups(ve)) == 1


def test_unknown_event_types_are_stored_and_ignored(stripe_on, ve):
    body = make_event("customer.created", {"id": "cus_1", "object": "customer"}, event_id="evt_other")
    assert deliver(body).status_code == 200
    assert StripeEvent.objects.get(event_id="evt_other").handling == StripeEvent.Handling.IGNORED


def test_receipt_email_is_sent_to_the_payer_after_a_top_up(stripe_on, ve, django_capture_on_commit_callbacks):
    # given
    payment = start_stripe_payment(ve, 5000)
    stripe_on.complete(payment.stripe_session_id, email="payer@example.com")
    body = event_for(stripe_on, COMPLETED, payment.stripe_session_id)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        deliver(body)
    with django_capture_on_commit_callbacks(execute=True):
        deliver(body)  # a redelivery sends no second receipt
    # then
    receipts = [m for m in mail.outbox if m.to == ["payer@example.com"]]
    assert len(receipts) == 1
    assert "$50.00" in receipts[0].subject
    assert "5,000,000" in receipts[0].body
    assert "Acme Chat" in receipts[0].body


def test_a_foreign_session_naming_our_payment_id_is_ignored(stripe_on, ve):
    # given another integration on the same Stripe account uses client_reference_id too
    payment = start_stripe_payment(ve, 5000)
    Payment.objects.filter(pk=payment.pk).update(stripe_session_id=None)  # still in the race window
    foreign = {"id": "cs_foreign", "object": "checkout.session", "status": "complete", "payment_status": "paid",
               "amount_total": 5000, "currency": "usd", "client_reference_id": str(payment.pk), "metadata": {}}
    # when
    response = deliver(make_event(COMPLETED, foreign, event_id="evt_foreign"))
    # then
    assert response.status_code == 200
    assert top_ups(ve) == []
    assert StripeEvent.objects.get(event_id="evt_foreign").handling == StripeEvent.Handling.IGNORED
