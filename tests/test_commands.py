from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from billing.models import ExchangeRate, LedgerEntry
from billing.rates import rate_in_force
from routing.models import (
    AccessKey,
    LogicalModel,
    ManagementToken,
    Membership,
    Organization,
    PhysicalModel,
    Provider,
    Route,
    VirtualEndpoint,
    hash_secret,
)
from tests.api.conftest import ApiClient


def _run(*args) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_merchant_prints_a_working_token_last(db):
    # when
    lines = _run("create_merchant", "Acme AI", "owner@acme.test", "--password", "long-password-1")
    # then
    token = lines[-1]
    org = Organization.objects.get(name="Acme AI")
    user = get_user_model().objects.get(username="owner@acme.test")
    assert Membership.objects.get(user=user, organization=org).role == "owner"
    assert user.check_password("long-password-1")
    assert ManagementToken.objects.get(organization=org).token_hash == hash_secret(token)
    response = ApiClient(token).post("/providers", {"name": "p", "kind": "openai", "base_url": "https://x.test/v1"})
    assert response.status_code == 201
    assert Provider.objects.get(pk=response.json()["id"]).organization == org


def test_create_merchant_refuses_an_existing_email(db):
    _run("create_merchant", "A", "same@acme.test")
    with pytest.raises(CommandError):
        _run("create_merchant", "B", "same@acme.test")
    assert Organization.objects.filter(name="B").count() == 0


def test_generate_encryption_key_prints_a_fernet_key():
    key = _run("generate_encryption_key")[-1]
    Fernet(key.encode())  # raises if malformed


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def _state():
    models = [Organization, get_user_model(), Membership, Provider, PhysicalModel, LogicalModel, Route,
              VirtualEndpoint, AccessKey, LedgerEntry, ExchangeRate]
    counts = {m.__name__: m.objects.count() for m in models}
    ve = VirtualEndpoint.objects.get(name="Demo endpoint")
    return counts, ve.public_id, ve.credit_budget, list(AccessKey.objects.values_list("key_hash", flat=True))


def test_demo_setup_twice_gives_the_same_state(db, data_dir):
    # when
    first_out = _run("demo_setup", "--base-url", "http://localhost:8123")
    first = _state()
    second_out = _run("demo_setup", "--base-url", "http://localhost:8123")
    # then
    assert _state() == first
    assert first_out[-1] == second_out[-1]
    counts, ve_id, budget, _ = first
    assert budget == 1000 * 1_000_000
    assert counts["AccessKey"] == 1 and counts["LedgerEntry"] == 1
    assert first_out[-1].startswith(f"curl http://localhost:8123/{ve_id}/v1/chat/completions -H 'Authorization: Bearer tb-")


def test_demo_setup_builds_a_usable_demo(db, data_dir):
    # when
    lines = _run("demo_setup", "--upstream-url", "http://127.0.0.1:9999/v1")
    # then
    org = Organization.objects.get(name="Demo Shop")
    user = get_user_model().objects.get(username="demo@tokenbill.local")
    assert user.check_password("tokenbill-demo") and any("tokenbill-demo" in line for line in lines)
    assert Provider.objects.get(organization=org).base_url == "http://127.0.0.1:9999/v1"
    demo_chat = LogicalModel.objects.get(organization=org, name="demo-chat")
    assert sorted(demo_chat.routes.values_list("priority", flat=True)) == [0, 1]
    assert demo_chat.output_price_per_mtok is not None
    ve = VirtualEndpoint.objects.get(organization=org)
    assert list(ve.allowed_models.all()) == [demo_chat]
    secret = (data_dir / "demo_key.txt").read_text().strip()
    assert AccessKey.objects.get(virtual_endpoint=ve).key_hash == hash_secret(secret)
    assert secret in lines[-1]
    assert rate_in_force(org.pk, "USD").credits_per_unit == 100000
    assert rate_in_force(None, "USD").credits_per_unit == 100000


def test_demo_setup_recreates_the_key_when_its_file_is_lost(db, data_dir):
    # given
    _run("demo_setup")
    old = (data_dir / "demo_key.txt").read_text().strip()
    (data_dir / "demo_key.txt").unlink()
    # when
    lines = _run("demo_setup")
    # then
    new = (data_dir / "demo_key.txt").read_text().strip()
    assert new != old and new in lines[-1]
    assert list(AccessKey.objects.values_list("key_hash", flat=True)) == [hash_secret(new)]
    assert LedgerEntry.objects.count() == 1


def test_demo_setup_prints_the_balance_exactly_after_spending(db, data_dir):
    # given: the demo has spent a little (as after a few calls)
    _run("demo_setup")
    VirtualEndpoint.objects.filter(name="Demo endpoint").update(credit_spend=68_000)
    # when
    lines = _run("demo_setup")
    # then: not rounded down to a whole credit
    assert any(line.endswith("(balance 999.93 credits)") for line in lines), lines


def test_create_merchant_refuses_a_malformed_email(db):
    with pytest.raises(CommandError, match="not an email"):
        _run("create_merchant", "A", "not-an-email")
    assert not Organization.objects.exists()


def test_create_merchant_without_password_has_no_password_login(db):
    _run("create_merchant", "A", "nopw@acme.test")
    assert not get_user_model().objects.get(username="nopw@acme.test").has_usable_password()
