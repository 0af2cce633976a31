"""Money records: exchange rates, the ledger, request logs, payments, Stripe events.

All credit amounts are integer micro-credits (billing/money.py).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from routing.models import (
    AccessKey,
    LogicalModel,
    Organization,
    PhysicalModel,
    Provider,
    VirtualEndpoint,
    currency_validator,
)


class ExchangeRate(models.Model):
    """How many credits one unit of a currency is worth, from `effective_from` on.

    Rows are never edited: a new rate is a new row, so history stays and every ledger
    entry can name the rate it used. organization NULL is the operator's default for
    every organization; an organization's own row wins over it.
    """

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="exchange_rates"
    )
    currency = models.CharField(max_length=3, validators=[currency_validator])
    credits_per_unit = models.DecimalField(
        max_digits=24, decimal_places=8, validators=[MinValueValidator(Decimal("0.00000001"))]
    )
    effective_from = models.DateTimeField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["currency", "-effective_from"]
        indexes = [models.Index(fields=["organization", "currency", "-effective_from"], name="rate_lookup")]
        constraints = [models.CheckConstraint(condition=Q(credits_per_unit__gt=0), name="rate_positive")]

    def __str__(self) -> str:
        return f"1 {self.currency} = {self.credits_per_unit} credits from {self.effective_from:%Y-%m-%d %H:%M}"


class LedgerKind(models.TextChoices):
    GRANT = "grant", "Grant"
    TOP_UP = "top_up", "Top-up"
    CHARGE = "charge", "Charge"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"


class LedgerEntryQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionDenied("Ledger entries are append-only: post a new entry instead of updating one.")

    def delete(self):
        raise PermissionDenied("Ledger entries are append-only: post a reversing entry instead of deleting one.")


class LedgerEntry(models.Model):
    """One movement of credits on one Virtual Endpoint. Append-only.

    Rows are never updated or deleted (the model, its queryset and the admin refuse):
    the sums of a VE's entries ARE its balance, and a merchant must be able to explain
    every credit from them. A mistake is corrected by a new `adjustment` or `refund` entry.

    `amount` is signed micro-credits. A `charge` adds to the VE's credit_spend; every
    other kind adds to its credit_budget (an adjustment may be negative). The unique
    idempotency key makes every cause (a request id, a Stripe session, a grant request)
    post at most once, whatever retries or redeliveries happen.
    """

    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.PROTECT, related_name="ledger_entries")
    access_key = models.ForeignKey(AccessKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=16, choices=LedgerKind.choices)
    amount = models.BigIntegerField()
    idempotency_key = models.CharField(max_length=200, unique=True)
    request_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    payment = models.ForeignKey("Payment", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries")
    note = models.CharField(max_length=500, blank=True, default="")
    # The prices and exchange rate the amount was computed with.
    rate_snapshot = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["virtual_endpoint", "created_at"], name="ledger_ve_time")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind__in=["grant", "top_up", "charge", "refund"]) | Q(amount__gte=0),
                name="ledger_amount_sign",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} µcr on {self.virtual_endpoint_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise PermissionDenied("Ledger entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionDenied("Ledger entries are append-only.")


class RequestStatus(models.TextChoices):
    OK = "ok", "OK"
    CLIENT_ERROR = "client_error", "Client error"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    BUDGET_EXHAUSTED = "budget_exhausted", "Budget exhausted"
    RATE_LIMITED = "rate_limited", "Rate limited"
    DISCONNECTED = "disconnected", "Client disconnected"


class RequestLog(models.Model):
    """One row per gateway call, written off the hot path in batches.

    `attempts` is the route trail, in order: [{"physical_model_id", "upstream_model",
    "provider_id", "provider", "status", "error", "latency_ms"}, ...].
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.CASCADE, related_name="request_logs")
    access_key = models.ForeignKey(AccessKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="request_logs")
    run_id = models.CharField(max_length=200, blank=True, default="")
    endpoint = models.CharField(max_length=40, default="chat.completions")
    logical_model_name = models.CharField(max_length=200, blank=True, default="")
    logical_model = models.ForeignKey(LogicalModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    physical_model = models.ForeignKey(PhysicalModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=RequestStatus.choices, default=RequestStatus.OK)
    http_status = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=64, blank=True, default="")
    attempts = models.JSONField(default=list, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_creation_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Of output_tokens (billed as output, shown apart): OpenAI completion_tokens_details.
    # reasoning_tokens, Gemini thoughtsTokenCount, Anthropic thinking (counted from its text).
    reasoning_tokens = models.PositiveIntegerField(default=0)
    images = models.PositiveIntegerField(default=0)
    audio_seconds = models.DecimalField(max_digits=14, decimal_places=3, default=Decimal("0"))
    usage_estimated = models.BooleanField(default=False)
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal("0"), help_text="Provider currency.")
    cost_currency = models.CharField(max_length=3, blank=True, default="")
    cost_credits = models.BigIntegerField(default=0)
    charge = models.BigIntegerField(default=0)
    price_snapshot = models.JSONField(default=dict, blank=True)
    client_disconnected = models.BooleanField(default=False)
    started_at = models.DateTimeField(db_index=True)
    latency_ms = models.PositiveIntegerField(default=0)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-started_at"], name="reqlog_org_time"),
            models.Index(fields=["virtual_endpoint", "-started_at"], name="reqlog_ve_time"),
            models.Index(fields=["run_id"], name="reqlog_run"),
        ]

    def __str__(self) -> str:
        return self.request_id


class PaymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PAID = "paid", "Paid"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"
    CANCELED = "canceled", "Canceled"


class Payment(models.Model):
    """A top-up attempt by an end user. Credits reach the ledger once, when it is paid."""

    class Processor(models.TextChoices):
        STRIPE = "stripe", "Stripe"
        TEST = "test", "Test mode (no Stripe key configured)"

    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.PROTECT, related_name="payments")
    processor = models.CharField(max_length=16, choices=Processor.choices, default=Processor.STRIPE)
    amount_minor = models.PositiveBigIntegerField(help_text="In the currency's minor unit (cents; yen for JPY).")
    currency = models.CharField(max_length=3, validators=[currency_validator])
    credits = models.BigIntegerField(help_text="Micro-credits to grant, at the rate snapshot.")
    rate_snapshot = models.JSONField(default=dict, blank=True)
    stripe_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING)
    payer_email = models.EmailField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Payment {self.pk} {self.amount_minor} {self.currency} ({self.status})"


class StripeEvent(models.Model):
    class Handling(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    handling = models.CharField(max_length=16, choices=Handling.choices, default=Handling.RECEIVED)
    error = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)
    handled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


from billing.models_usage import DriftReport, Reservation, UsageRollup  # noqa: E402,F401  (billing-owned models)
