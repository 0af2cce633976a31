from datetime import timedelta

from django.utils import timezone

from billing import payments
from billing.models import Payment, PaymentStatus
from billing.tasks import checkout_catch_up
from tests.checkout.helpers import deliver, event_for, start_stripe_payment, top_ups


def _age(payment, minutes: int) -> None:
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(minutes=minutes))


def test_catch_up_credits_paid_sessions_whose_webhook_never_came(stripe_on, ve):
    # given a paid session with no webhook, one still open, one expired, one too recent to ask about
    paid, still_open, expired, recent = (start_stripe_payment(ve, 1000) for _ in range(4))
    stripe_on.complete(paid.stripe_session_id)
    stripe_on.expire(expired.stripe_session_id)
    stripe_on.complete(recent.stripe_session_id)
    for p in (paid, still_open, expired):
        _age(p, 30)
    ve.refresh_from_db()
    before = ve.balance
    # when the beat task runs
    counts = checkout_catch_up()
    # then
    assert counts["credited"] == 1 and counts["expired"] == 1 and counts["pending"] == 1
    statuses = {p.pk: Payment.objects.get(pk=p.pk).status for p in (paid, still_open, expired, recent)}
    assert statuses == {
        paid.pk: PaymentStatus.PAID, still_open.pk: PaymentStatus.PENDING,
        expired.pk: PaymentStatus.EXPIRED, recent.pk: PaymentStatus.PENDING,
    }
    ve.refresh_from_db()
    assert ve.balance == before + 1_000_000 * 1_000_000


def test_catch_up_and_a_late_webhook_credit_once(stripe_on, ve):
    # given the catch-up credited a session
    payment = start_stripe_payment(ve, 5000)
    stripe_on.complete(payment.stripe_session_id)
    _age(payment, 30)
    payments.catch_up_pending()
    # when the webhook finally arrives, and the task runs again
    assert deliver(event_for(stripe_on, "checkout.session.completed", payment.stripe_session_id)).status_code == 200
    again = payments.catch_up_pending()
    # then
    assert len(top_ups(ve)) == 1
    assert again["credited"] == 0


def test_catch_up_fails_payments_whose_session_was_never_created(stripe_on, ve):
    payment = Payment.objects.create(virtual_endpoint=ve, amount_minor=1000, currency="USD", credits=1)
    _age(payment, 30)
    assert payments.catch_up_pending()["failed"] == 1
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.FAILED


def test_catch_up_keeps_going_when_stripe_does_not_answer(stripe_on, ve):
    payment = start_stripe_payment(ve, 1000)
    _age(payment, 30)
    stripe_on.fail_next = 3  # the retrieve and its two retries
    assert payments.catch_up_pending()["errors"] == 1
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.PENDING


def test_catch_up_expires_abandoned_test_mode_payments(test_mode, ve):
    started = payments.checkout_start(virtual_endpoint=ve, amount_minor=1000, currency="USD")
    Payment.objects.filter(pk=started.payment.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert payments.catch_up_pending()["expired"] == 1
    assert Payment.objects.get(pk=started.payment.pk).status == PaymentStatus.EXPIRED
