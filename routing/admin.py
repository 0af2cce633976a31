"""Operator admin for tenancy and routing configuration.

Secrets never render here: provider credentials are a write-only form field (encrypted
on save, an empty field keeps the stored one); access keys and management tokens show
only their visible prefix, and a new one's secret is shown once, in the message after
it is created. Every save tells the gateway the configuration changed.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse

from billing.money import format_credits
from routing import services
from routing.models import (
    AccessKey,
    ConfigVersion,
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
from tokenbill import netguard


class ConfigChangingAdmin(admin.ModelAdmin):
    """Bumps the configuration version after every write, so gateways reload."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        services.config_changed()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        services.config_changed()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        services.config_changed()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        services.config_changed()


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        exclude = ["alert_webhook_secret"]

    def clean_alert_webhook_url(self):
        # The same SSRF guard as the console's settings form: an operator must not be able to
        # aim the alerts at 127.0.0.1 or the metadata service either.
        url = self.cleaned_data["alert_webhook_url"]
        netguard.validate_webhook_url(url)
        return url


@admin.register(Organization)
class OrganizationAdmin(ConfigChangingAdmin):
    form = OrganizationForm
    list_display = ["name", "slug", "markup", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    exclude = ["alert_webhook_secret"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__username", "user__email", "organization__name"]
    autocomplete_fields = ["user", "organization"]


@admin.register(ManagementToken)
class ManagementTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "organization", "revoked", "created_at", "last_used_at"]
    list_filter = ["revoked", "organization"]
    search_fields = ["name", "prefix", "organization__name"]
    fields = ["organization", "name", "revoked", "prefix", "created_by", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        secret = obj.new_secret()
        obj.prefix, obj.token_hash, obj.created_by = secret[:10], hash_secret(secret), request.user
        super().save_model(request, obj, form, change)
        messages.warning(request, f"Management token (shown only now, copy it): {secret}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        queryset.update(revoked=True)


class ProviderForm(forms.ModelForm):
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted and never shown. Leave empty to keep the current key.",
    )

    class Meta:
        model = Provider
        fields = ["organization", "name", "kind", "base_url", "api_key", "api_version", "currency",
                  "connect_timeout", "first_byte_timeout", "read_timeout", "enabled", "allow_private_network",
                  "proxy_url"]

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.set_credentials(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


class PhysicalModelInline(admin.TabularInline):
    model = PhysicalModel
    extra = 0
    fields = ["upstream_model", "modality", "input_cost_per_mtok", "output_cost_per_mtok", "enabled"]
    show_change_link = True


@admin.register(Provider)
class ProviderAdmin(ConfigChangingAdmin):
    form = ProviderForm
    list_display = ["name", "organization", "kind", "base_url", "currency", "has_credentials", "enabled"]
    list_filter = ["kind", "enabled", "currency", "organization"]
    search_fields = ["name", "base_url", "organization__name"]
    inlines = [PhysicalModelInline]

    @admin.display(boolean=True, description="credentials")
    def has_credentials(self, obj):
        return obj.has_credentials


@admin.register(PhysicalModel)
class PhysicalModelAdmin(ConfigChangingAdmin):
    list_display = ["upstream_model", "provider", "modality", "input_cost_per_mtok", "output_cost_per_mtok",
                    "output_limit_parameter", "max_output_tokens", "enabled"]
    list_filter = ["modality", "enabled", "provider__kind", "provider__organization"]
    search_fields = ["upstream_model", "provider__name"]
    list_select_related = ["provider"]
    autocomplete_fields = ["provider"]


class RouteInline(admin.TabularInline):
    model = Route
    extra = 0
    autocomplete_fields = ["physical_model"]


@admin.register(LogicalModel)
class LogicalModelAdmin(ConfigChangingAdmin):
    list_display = ["name", "organization", "modality", "input_price_per_mtok", "output_price_per_mtok",
                    "unsupported_params", "enabled"]
    list_filter = ["modality", "enabled", "organization"]
    search_fields = ["name", "description", "organization__name"]
    inlines = [RouteInline]


@admin.register(Route)
class RouteAdmin(ConfigChangingAdmin):
    list_display = ["logical_model", "physical_model", "priority", "weight", "enabled"]
    list_filter = ["enabled", "priority", "logical_model__organization"]
    search_fields = ["logical_model__name", "physical_model__upstream_model"]
    list_select_related = ["logical_model", "physical_model__provider"]
    autocomplete_fields = ["logical_model", "physical_model"]


class GrantForm(forms.Form):
    # At most 10**12 credits, like the API and the console (routing.services.MAX_GRANT_MICROS).
    credits = forms.DecimalField(min_value=Decimal("0.000001"), decimal_places=6, max_digits=18)
    note = forms.CharField(max_length=500, required=False)


@admin.register(VirtualEndpoint)
class VirtualEndpointAdmin(ConfigChangingAdmin):
    actions = ["grant_credits"]
    list_display = ["name", "public_id", "organization", "status", "budget", "spend", "balance_credits"]
    list_filter = ["status", "exhaustion_mode", "organization"]
    search_fields = ["name", "public_id", "organization__name"]
    readonly_fields = ["public_id", "budget", "spend", "reserved", "balance_credits"]
    filter_horizontal = ["allowed_models"]

    @admin.display(description="budget (credits)", ordering="credit_budget")
    def budget(self, obj):
        return format_credits(obj.credit_budget)

    @admin.display(description="spend (credits)", ordering="credit_spend")
    def spend(self, obj):
        return format_credits(obj.credit_spend)

    @admin.display(description="reserved (credits)")
    def reserved(self, obj):
        return format_credits(obj.credit_reserved)

    @admin.display(description="balance (credits)")
    def balance_credits(self, obj):
        return format_credits(obj.balance)

    @admin.action(description="Grant credits (posts a ledger entry)")
    def grant_credits(self, request, queryset):
        form = GrantForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            granted = 0
            for endpoint in queryset:
                try:
                    services.grant_credits(virtual_endpoint=endpoint, credits=form.cleaned_data["credits"],
                                           note=form.cleaned_data["note"] or "Granted in admin", created_by=request.user)
                    granted += 1
                except ValidationError as exc:  # e.g. the budget would pass what can be stored
                    self.message_user(request, f"{endpoint}: {' '.join(exc.messages)}", level=messages.ERROR)
            self.message_user(request, f"Granted {form.cleaned_data['credits']} credits to {granted} endpoint(s).")
            return None
        context = {**self.admin_site.each_context(request), "form": form, "endpoints": queryset,
                   "title": "Grant credits"}
        return TemplateResponse(request, "admin/routing/grant_credits.html", context)


@admin.register(AccessKey)
class AccessKeyAdmin(ConfigChangingAdmin):
    list_display = ["name", "prefix", "virtual_endpoint", "enabled", "expires_at", "last_used_at", "created_at"]
    list_filter = ["enabled", "virtual_endpoint__organization"]
    search_fields = ["name", "prefix", "virtual_endpoint__name", "virtual_endpoint__public_id"]
    fields = ["virtual_endpoint", "name", "enabled", "expires_at", "credit_limit", "allowed_models",
              "prefix", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    filter_horizontal = ["allowed_models"]
    autocomplete_fields = ["virtual_endpoint"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        secret = obj.new_secret()
        obj.prefix, obj.key_hash = secret[:10], hash_secret(secret)
        super().save_model(request, obj, form, change)
        messages.warning(request, f"Access key (shown only now, copy it): {secret}")

    @admin.action(description="Disable selected keys")
    def revoke(self, request, queryset):
        queryset.update(enabled=False)
        services.config_changed()


@admin.register(ConfigVersion)
class ConfigVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "version", "changed_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
