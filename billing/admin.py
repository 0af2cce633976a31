"""Operator admin for money records.

The ledger is append-only, so its admin is read-only (no add, change or delete); credits
are added with the "Grant credits" action on Virtual Endpoints, which posts a ledger
entry like the API does. Request logs, payments and Stripe events are records of what
happened: read-only too. Exchange rates can be added, never edited (a new rate is a new
row, the old ones stay as history).
"""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin

from billing.models import ExchangeRate, LedgerEntry, Payment, RequestLog, StripeEvent
from billing.money import format_credits


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ExchangeRate)
class ExchangeRateAdmin(admin.ModelAdmin):
    list_display = ["currency", "credits_per_unit", "scope", "effective_from", "created_by", "created_at"]
    list_filter = ["currency", ("organization", admin.EmptyFieldListFilter), "organization"]
    search_fields = ["currency", "organization__name"]
    fields = ["organization", "currency", "credits_per_unit", "effective_from", "created_by", "created_at"]
    readonly_fields = ["created_by", "created_at"]
    date_hierarchy = "effective_from"

    @admin.display(description="applies to")
    def scope(self, obj):
        return obj.organization or "every organization (default)"

    def has_change_permission(self, request, obj=None):
        return obj is None  # adding is allowed; an existing rate is history

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        from routing.services import config_changed

        config_changed()


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "virtual_endpoint", "kind", "credits", "idempotency_key", "request_id", "note"]
    list_filter = ["kind", "virtual_endpoint__organization"]
    search_fields = ["idempotency_key", "request_id", "note", "virtual_endpoint__public_id", "virtual_endpoint__name"]
    list_select_related = ["virtual_endpoint"]
    date_hierarchy = "created_at"

    @admin.display(description="credits", ordering="amount")
    def credits(self, obj):
        return format_credits(obj.amount)


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "request_id", "virtual_endpoint", "logical_model_name", "status", "http_status",
                    "input_tokens", "output_tokens", "charge_credits", "latency_ms"]
    list_filter = ["status", "http_status", "stream", "endpoint", "organization"]
    search_fields = ["request_id", "run_id", "logical_model_name", "virtual_endpoint__public_id"]
    list_select_related = ["virtual_endpoint"]
    date_hierarchy = "started_at"

    @admin.display(description="charge (credits)", ordering="charge")
    def charge_credits(self, obj):
        return format_credits(obj.charge)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "virtual_endpoint", "processor", "amount_minor", "currency", "status",
                    "credited_at", "payer_email"]
    list_filter = ["status", "processor", "currency"]
    search_fields = ["stripe_session_id", "stripe_payment_intent_id", "payer_email", "virtual_endpoint__public_id"]
    list_select_related = ["virtual_endpoint"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "type", "event_id", "handling", "handled_at"]
    list_filter = ["handling", "type"]
    search_fields = ["event_id", "type"]


def _register_remaining_read_only() -> None:
    """Billing's operational models (reservations, rollups, drift reports, …) are derived
    data: visible to operators, never edited by hand."""
    for model in apps.get_app_config("billing").get_models():
        if not admin.site.is_registered(model):
            field_names = [f.name for f in model._meta.fields][:8]
            admin.site.register(model, type(f"{model.__name__}Admin", (ReadOnlyAdmin,), {"list_display": field_names}))


_register_remaining_read_only()
