import pytest
from django.core.exceptions import PermissionDenied

from billing.ledger import ledger_sums, post_entry
from billing.models import LedgerEntry
from tests.factories import make_ve


def test_post_entry_moves_budget_once_per_idempotency_key(org):
    # given
    ve = make_ve(org)
    # when
    first = post_entry(virtual_endpoint=ve, kind="grant", amount=5_000_000, idempotency_key="g-1")
    replay = post_entry(virtual_endpoint=ve, kind="grant", amount=5_000_000, idempotency_key="g-1")
    # then
    ve.refresh_from_db()
    assert first.created and not replay.created
    assert replay.entry.pk == first.entry.pk
    assert ve.credit_budget == 5_000_000
    assert ledger_sums(ve.pk) == (5_000_000, 0)


def test_charge_moves_spend_and_sums_match(org):
    ve = make_ve(org, credits=10)
    post_entry(virtual_endpoint=ve, kind="charge", amount=1_500_000, idempotency_key="req-1")
    ve.refresh_from_db()
    assert (ve.credit_budget, ve.credit_spend, ve.balance) == (10_000_000, 1_500_000, 8_500_000)
    assert ledger_sums(ve.pk) == (ve.credit_budget, ve.credit_spend)


def test_ledger_entries_cannot_be_updated_or_deleted(org):
    ve = make_ve(org, credits=1)
    entry = LedgerEntry.objects.get(virtual_endpoint=ve)
    entry.note = "tampered"
    with pytest.raises(PermissionDenied):
        entry.save()
    with pytest.raises(PermissionDenied):
        entry.delete()
    with pytest.raises(PermissionDenied):
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=0)
    with pytest.raises(PermissionDenied):
        LedgerEntry.objects.filter(pk=entry.pk).delete()


def test_float_amounts_are_refused(org):
    ve = make_ve(org)
    with pytest.raises(TypeError):
        post_entry(virtual_endpoint=ve, kind="grant", amount=1.5, idempotency_key="f")
