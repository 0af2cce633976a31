import pytest

from billing import payments, stripe_gateway
from billing.models import Payment, PaymentStatus


def test_checkout_start_creates_a_session_on_stripe_with_our_payment_as_idempotency_key(stripe_on, ve):
    # when
    started = payments.checkout_start(
        virtual_endpoint=ve, amount_minor=5000, currency="USD", client=stripe_gateway.get_client()
    )
    # then the Payment holds the quote at the rate snapshot and the session id
    payment = Payment.objects.get(pk=started.payment.pk)
    assert payment.status == PaymentStatus.PENDING
    assert (payment.amount_minor, payment.currency, payment.processor) == (5000, "USD", "stripe")
    assert payment.credits == 5_000_000 * 1_000_000
    assert payment.rate_snapshot["credits_per_unit"] == "100000.00000000"
    session = stripe_on.sessions[payment.stripe_session_id]
    assert started.redirect_url == session["url"]
    # and Stripe got what it needs to charge exactly this amount and to find our payment again
    request = stripe_on.requests[-1]
    assert request["headers"]["Idempotency-Key"] == f"tokenbill-checkout-payment-{payment.pk}"
    params = request["params"]
    assert params["mode"] == "payment"
    assert params["line_items"]["0"]["price_data"]["unit_amount"] == "5000"
    assert params["line_items"]["0"]["price_data"]["currency"] == "usd"
    assert params["client_reference_id"] == str(payment.pk)
    assert params["metadata"] == {"ve_id": ve.public_id, "payment_id": str(payment.pk)}
    assert "session_id={CHECKOUT_SESSION_ID}" in params["success_url"]
    assert params["cancel_url"].startswith("http://localhost:8000/checkout/cancel?ref=")


def test_a_retried_create_with_the_same_payment_returns_the_same_session(stripe_on, ve):
    # given a payment whose session was created once
    started = payments.checkout_start(
        virtual_endpoint=ve, amount_minor=1000, currency="USD", client=stripe_gateway.get_client()
    )
    first_id = Payment.objects.get(pk=started.payment.pk).stripe_session_id
    # when the create is retried (say, after a timeout) for the same payment
    again = stripe_gateway.create_checkout_session(
        stripe_gateway.get_client(), payment_id=started.payment.pk, ve_public_id=ve.public_id,
        amount_minor=1000, currency="USD", product_name="x", success_url="http://x/s", cancel_url="http://x/c",
    )
    # then Stripe answers with the session it already made
    assert again.id == first_id
    assert len(stripe_on.sessions) == 1


def test_stripe_outage_marks_the_payment_failed_and_tells_the_payer(stripe_on, ve):
    # given Stripe answers 500 to the create and to both retries
    stripe_on.fail_next = 3
    # when / then
    with pytest.raises(payments.CheckoutError, match="unavailable"):
        payments.checkout_start(virtual_endpoint=ve, amount_minor=1000, currency="USD",
                                client=stripe_gateway.get_client())
    assert Payment.objects.get().status == PaymentStatus.FAILED


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [(50, "USD", "between"), (100001, "USD", "between"), (5000, "EUR", "not accepted")],
)
def test_checkout_start_refuses_amounts_and_currencies_the_merchant_did_not_allow(stripe_on, ve, amount, currency,
                                                                                  message):
    with pytest.raises(payments.CheckoutError, match=message):
        payments.checkout_start(virtual_endpoint=ve, amount_minor=amount, currency=currency,
                                client=stripe_gateway.get_client())
    assert not Payment.objects.exists()


def test_jpy_payment_sends_whole_yen_to_stripe(stripe_on, org, rates):
    # given a VE that sells in yen
    from tests.factories import make_ve

    ve = make_ve(org, checkout_currencies=["JPY"], checkout_amounts=[1000, 5000])
    # when
    started = payments.checkout_start(virtual_endpoint=ve, amount_minor=5000, currency="JPY",
                                      client=stripe_gateway.get_client())
    # then ¥5,000 is 5000 minor units at Stripe, and buys 5000 x 700 credits
    payment = Payment.objects.get(pk=started.payment.pk)
    assert stripe_on.requests[-1]["params"]["line_items"]["0"]["price_data"]["unit_amount"] == "5000"
    assert stripe_on.requests[-1]["params"]["line_items"]["0"]["price_data"]["currency"] == "jpy"
    assert payment.credits == 3_500_000 * 1_000_000
