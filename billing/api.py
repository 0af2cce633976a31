"""Management API: credit grants and exchange rates.

(The ledger, request and usage reports live in billing/reports_api.py.)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from billing import rates
from billing.models import LedgerEntry, LedgerKind
from billing.money import credits_to_micros_exact, format_credits
from routing import selectors, services
from routing.schemas import DecimalText

router = Router()


class LedgerEntryOut(Schema):
    id: int
    kind: str
    amount: str
    note: str
    idempotency_key: str
    created_at: datetime

    @staticmethod
    def resolve_amount(obj) -> str:
        return format_credits(obj.amount)


class GrantIn(Schema):
    credits: Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=6)] = Field(
        description="Credits to add, as a decimal string such as \"1000\" or \"12.5\"."
    )
    note: str = Field("", max_length=500)
    idempotency_key: str | None = Field(
        None, max_length=150, description="Repeat a grant safely: the same key posts once. Generated when absent."
    )


class GrantOut(Schema):
    entry: LedgerEntryOut
    created: bool
    credit_budget: str
    credit_spend: str
    balance: str


def _endpoint(request, ve_id: str):
    return get_object_or_404(selectors.endpoint_list(organization_id=request.auth.organization_id), public_id=ve_id)


@router.get("/virtual-endpoints/{ve_id}/grants", response=list[LedgerEntryOut], tags=["credits"])
def grant_list(request, ve_id: str):
    return LedgerEntry.objects.filter(virtual_endpoint=_endpoint(request, ve_id), kind=LedgerKind.GRANT)


@router.post("/virtual-endpoints/{ve_id}/grants", response={200: GrantOut, 201: GrantOut}, tags=["credits"])
def grant_create(request, ve_id: str, payload: GrantIn):
    """Adds credits through the ledger. 201 when posted, 200 when the idempotency key was
    already used on this VE (nothing moves; the first entry is returned)."""
    endpoint = _endpoint(request, ve_id)
    # An Idempotency-Key header (as Stripe takes it) works as the body's idempotency_key.
    header = (request.headers.get("Idempotency-Key") or "").strip()
    if len(header) > 150:
        raise ValidationError({"idempotency_key": "The Idempotency-Key header is at most 150 characters."})
    if header and payload.idempotency_key and header != payload.idempotency_key:
        raise ValidationError({"idempotency_key": "The Idempotency-Key header and the body's idempotency_key differ."})
    given = payload.idempotency_key or header
    key = given and f"api-grant:{endpoint.public_id}:{given}"
    posted = services.grant_credits(
        virtual_endpoint=endpoint, credits=payload.credits, note=payload.note, idempotency_key=key
    )
    if posted.entry.virtual_endpoint_id != endpoint.pk:
        raise ValidationError({"idempotency_key": "Already used."})
    if not posted.created and posted.entry.amount != credits_to_micros_exact(payload.credits):
        raise ValidationError({"idempotency_key": "Already used for a grant of another amount."})
    endpoint.refresh_from_db()
    return Status(201 if posted.created else 200, {
        "entry": posted.entry,
        "created": posted.created,
        "credit_budget": format_credits(endpoint.credit_budget),
        "credit_spend": format_credits(endpoint.credit_spend),
        "balance": format_credits(endpoint.balance),
    })


# --- exchange rates -------------------------------------------------------------------

class RateOut(Schema):
    currency: str
    credits_per_unit: DecimalText
    effective_from: datetime
    scope: str = Field(description='"organization" (yours) or "default" (the operator\'s, for every organization)')
    in_force: bool

    @staticmethod
    def resolve_scope(obj) -> str:
        return "default" if obj.organization_id is None else "organization"


class RateIn(Schema):
    credits_per_unit: Annotated[Decimal, Field(gt=0, max_digits=24, decimal_places=8)]
    effective_from: datetime | None = Field(None, description="Defaults to now.")


class RateDetailOut(Schema):
    currency: str
    in_force: RateOut | None
    history: list[RateOut]


def _currency(value: str) -> str:
    currency = value.upper()
    if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
        raise ValidationError({"currency": "Use a three-letter ISO 4217 code such as USD."})
    return currency


def _with_in_force(rows, organization_id: int) -> list:
    rows = list(rows)
    in_force_ids = set()
    for currency in {r.currency for r in rows}:
        rate = rates.rate_in_force(organization_id, currency)
        if rate is not None:
            in_force_ids.add(rate.pk)
    for row in rows:
        row.in_force = row.pk in in_force_ids
    return rows


@router.get("/exchange-rates", response=list[RateOut], tags=["exchange rates"])
def rate_list(request, currency: str | None = None):
    """Every rate that applies to you, newest first per currency: yours and the defaults."""
    org_id = request.auth.organization_id
    return _with_in_force(rates.rate_history(org_id, _currency(currency) if currency else None), org_id)


@router.get("/exchange-rates/{currency}", response=RateDetailOut, tags=["exchange rates"])
def rate_get(request, currency: str):
    org_id, currency = request.auth.organization_id, _currency(currency)
    history = _with_in_force(rates.rate_history(org_id, currency), org_id)
    in_force = next((r for r in history if r.in_force), None)
    return {"currency": currency, "in_force": in_force, "history": history}


@router.put("/exchange-rates/{currency}", response=RateOut, tags=["exchange rates"])
def rate_put(request, currency: str, payload: RateIn):
    """Sets your organization's rate from now (or `effective_from`) on; history is kept."""
    rate = rates.rate_set(
        request.auth.organization, _currency(currency), payload.credits_per_unit, effective_from=payload.effective_from
    )
    return _with_in_force([rate], request.auth.organization_id)[0]
