import pytest

from billing.rates import rate_set
from tests import factories
from tests.fakes.stripe_server import FAKE_API_KEY, FakeStripe

WEBHOOK_SECRET = "whsec_test_secret_for_checkout_tests"


@pytest.fixture
def fake_stripe():
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def stripe_on(settings, fake_stripe):
    """Stripe configured and pointed at the fake API server."""
    settings.STRIPE_SECRET_KEY = FAKE_API_KEY
    settings.STRIPE_API_BASE = fake_stripe.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return fake_stripe


@pytest.fixture
def test_mode(settings):
    """The embedded default: no Stripe key, test-mode payments allowed."""
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.CHECKOUT_TEST_MODE = True


@pytest.fixture
def rates(db):
    """Operator defaults: 1 USD = 100,000 credits; 1 JPY = 700 credits; 1 KWD = 325,000 credits."""
    rate_set(None, "USD", "100000")
    rate_set(None, "JPY", "700")
    rate_set(None, "KWD", "325000")


@pytest.fixture
def ve(org, rates):
    return factories.make_ve(org, name="Acme Chat", credits=3)
