"""Console forms. Money fields take credits as text and become int micro-credits through
billing.money.credits_to_micros_exact, so "0.1" is exact and "1e-9" is refused inline."""

from __future__ import annotations

import secrets
from django import forms
from django.utils import timezone

from billing.models import ExchangeRate, RequestStatus
from billing.money import MoneyError, credits_to_micros_exact, format_credits
from console.models import Invitation
from routing.models import (
    AccessKey,
    LogicalModel,
    Organization,
    PhysicalModel,
    Provider,
    Role,
    Route,
    UnsupportedParams,
    VirtualEndpoint,
)
from tokenbill import netguard

# Typed credits top out here (the API's grant bound): far below what a BIGINT of
# micro-credits holds, so sums of a few of them still fit.
MAX_CREDITS_MICROS = 10**18


class CreditsField(forms.CharField):
    """Credits typed by a person -> int micro-credits (exact; at most 6 decimals)."""

    def __init__(self, *, allow_negative: bool = False, **kw):
        self.allow_negative = allow_negative
        kw.setdefault("widget", forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "e.g. 5000"}))
        super().__init__(**kw)

    def to_python(self, value):
        value = (super().to_python(value) or "").replace(",", "").replace("_", "").strip()
        if not value:
            return None
        try:
            micros = credits_to_micros_exact(value)
        except MoneyError as exc:
            raise forms.ValidationError(str(exc).capitalize() + ".") from None
        if micros < 0 and not self.allow_negative:
            raise forms.ValidationError("Must not be negative.")
        if abs(micros) > MAX_CREDITS_MICROS:
            raise forms.ValidationError(f"At most {format_credits(MAX_CREDITS_MICROS)} credits.")
        return micros

    def prepare_value(self, value):
        if isinstance(value, int):
            return format_credits(value)
        return value


class ProviderForm(forms.ModelForm):
    # Write-only: never pre-filled, never rendered back (render_value=False).
    api_key = forms.CharField(
        label="API key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted. Leave empty to keep the saved key.",
    )

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key", "api_version", "currency", "connect_timeout",
                  "first_byte_timeout", "read_timeout", "enabled"]
        widgets = {"base_url": forms.URLInput(attrs={"placeholder": "https://api.openai.com/v1"})}
        labels = {"base_url": "Base URL", "api_version": "API version", "connect_timeout": "Connect timeout (s)",
                  "first_byte_timeout": "First-byte timeout (s)", "read_timeout": "Stream silence timeout (s)"}

    def __init__(self, *args, organization: Organization, **kw):
        super().__init__(*args, **kw)
        self.instance.organization = organization
        if not self.instance.pk:
            self.fields["api_key"].help_text = "Stored encrypted, never shown again."

    def clean_name(self):
        name = self.cleaned_data["name"]
        clash = Provider.objects.filter(organization=self.instance.organization, name=name).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("A provider with this name already exists.")
        return name

    def clean(self):
        data = super().clean()
        if not self.instance.pk and not data.get("api_key") and data.get("kind") != "openai_compatible":
            self.add_error("api_key", "This provider needs an API key.")
        return data

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.set_credentials(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


class PhysicalModelForm(forms.ModelForm):
    class Meta:
        model = PhysicalModel
        fields = ["provider", "upstream_model", "modality", "input_cost_per_mtok", "cached_input_cost_per_mtok",
                  "cache_write_cost_per_mtok", "output_cost_per_mtok", "audio_cost_per_second",
                  "output_limit_parameter", "max_output_tokens", "enabled"]
        labels = {"input_cost_per_mtok": "Input / 1M tokens", "cached_input_cost_per_mtok": "Cached input / 1M",
                  "cache_write_cost_per_mtok": "Cache write / 1M", "output_cost_per_mtok": "Output / 1M tokens",
                  "audio_cost_per_second": "Audio / second"}

    def __init__(self, *args, organization: Organization, **kw):
        super().__init__(*args, **kw)
        self.fields["provider"].queryset = Provider.objects.filter(organization=organization)
        if self.instance.pk:
            self.fields["provider"].disabled = True  # a model stays on its provider; add a new one instead

    def clean(self):
        data = super().clean()
        provider, name = data.get("provider"), data.get("upstream_model")
        if provider and name:
            clash = PhysicalModel.objects.filter(provider=provider, upstream_model=name).exclude(pk=self.instance.pk)
            if clash.exists():
                self.add_error("upstream_model", "This provider already has this model.")
        return data


class LogicalModelForm(forms.ModelForm):
    class Meta:
        model = LogicalModel
        fields = ["name", "description", "modality", "input_price_per_mtok", "cached_input_price_per_mtok",
                  "output_price_per_mtok", "price_per_second", "default_max_output_tokens", "unsupported_params",
                  "fallback_on_timeout", "enabled"]
        labels = {"input_price_per_mtok": "Sale price: input / 1M (credits)",
                  "cached_input_price_per_mtok": "Sale price: cached input / 1M",
                  "output_price_per_mtok": "Sale price: output / 1M (credits)",
                  "price_per_second": "Sale price: audio / second",
                  "unsupported_params": "Parameters a provider cannot take"}
        help_texts = {"name": "What clients put in \"model\", e.g. gpt-4o-mini or chat-fast."}

    # Sale price field -> the physical model's cost field it is compared with.
    PRICE_COST = {"input_price_per_mtok": "input_cost_per_mtok", "cached_input_price_per_mtok": "cached_input_cost_per_mtok",
                  "output_price_per_mtok": "output_cost_per_mtok", "price_per_second": "audio_cost_per_second"}

    confirm_loss = forms.BooleanField(required=False, widget=forms.HiddenInput,
                                      label="Save anyway: I mean to sell below cost on the routes above")

    def __init__(self, *args, organization: Organization, **kw):
        super().__init__(*args, **kw)
        self.instance.organization = organization
        self.fields["unsupported_params"].required = False  # left out of a post: the default, drop
        from console.selectors import current_rates

        self.rates = current_rates(organization)
        self.routes = (list(self.instance.routes.filter(enabled=True).select_related("physical_model__provider"))
                       if self.instance.pk else [])
        for name, cost_field in self.PRICE_COST.items():
            costs = [self._cost_text(r.physical_model, cost_field) for r in self.routes]
            costs = [c for c in costs if c]
            self.fields[name].help_text = "Empty: cost × organization markup." + (
                f" Routes cost: {'; '.join(costs)}." if costs else "")

    def _cost_credits(self, pm, cost_field):
        cost, rate = getattr(pm, cost_field), self.rates.get(pm.provider.currency)
        return None if cost is None or rate is None else cost * rate

    def _cost_text(self, pm, cost_field) -> str:
        """"fake-a 1.5 USD = 150,000 credits" (the cost in both units)."""
        cost = getattr(pm, cost_field)
        if not cost:  # unpriced (None or 0): nothing to sell below
            return ""
        credits = self._cost_credits(pm, cost_field)
        converted = f"{credits.normalize():,f} credits" if credits is not None else f"no rate for {pm.provider.currency}"
        return f"{pm.upstream_model} {cost.normalize():f} {pm.provider.currency} = {converted}"

    def clean(self):
        data = super().clean()
        losses = []
        for name, cost_field in self.PRICE_COST.items():
            price = data.get(name)
            if price is None:
                continue
            for r in self.routes:
                credits = self._cost_credits(r.physical_model, cost_field)
                if credits is not None and credits > price:
                    losses.append(f"{self.fields[name].label.replace('Sale price: ', '')}: "
                                  f"{self._cost_text(r.physical_model, cost_field)} > price {price.normalize():,f} credits")
        if losses and not data.get("confirm_loss"):
            self.fields["confirm_loss"].widget = forms.CheckboxInput()
            raise forms.ValidationError(
                "This price sells below cost on %(n)s (%(which)s). Raise the price, or tick “Save anyway” below.",
                params={"n": "a route" if len(losses) == 1 else f"{len(losses)} routes", "which": "; ".join(losses)})
        data.pop("confirm_loss", None)
        return data

    def clean_unsupported_params(self):
        return self.cleaned_data.get("unsupported_params") or UnsupportedParams.DROP

    def clean_name(self):
        name = self.cleaned_data["name"]
        clash = LogicalModel.objects.filter(organization=self.instance.organization, name=name).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("A logical model with this name already exists.")
        return name


class RouteForm(forms.ModelForm):
    class Meta:
        model = Route
        fields = ["physical_model", "priority", "weight"]
        help_texts = {"priority": "Lower tiers are tried first.", "weight": "Share of traffic inside its tier."}

    def __init__(self, *args, logical_model: LogicalModel, **kw):
        super().__init__(*args, **kw)
        self.instance.logical_model = logical_model
        used = logical_model.routes.values_list("physical_model_id", flat=True)
        self.fields["physical_model"].queryset = (
            PhysicalModel.objects.filter(provider__organization=logical_model.organization)
            .exclude(pk__in=used).select_related("provider")
        )


class RouteInlineForm(forms.ModelForm):
    class Meta:
        model = Route
        fields = ["priority", "weight", "enabled"]


class MoneyAmountsField(forms.CharField):
    """Amounts typed in the currency's units ("10, 50, 99.50"; "500" yen), cleaned to minor units."""

    def __init__(self, *args, many: bool = False, **kw):
        self.many, self.currency = many, "USD"
        super().__init__(*args, **kw)

    def to_python(self, value):
        from billing.currency import exponent, to_minor
        from billing.money import MoneyError

        text = (super().to_python(value) or "").strip()
        parts = [p.strip() for p in text.split(",") if p.strip()] if self.many else ([text] if text else [])
        places = exponent(self.currency)
        example = "10, 50, 100" if not places else ("10, 50.50" if places == 2 else "5, 12.500")
        amounts = []
        for part in parts:
            try:
                minor = to_minor(part.replace("_", ""), self.currency)
            except (MoneyError, ArithmeticError, ValueError):
                raise forms.ValidationError(
                    f"Amounts in {self.currency} with at most {places} decimal place{'s' if places != 1 else ''}, "
                    f"e.g. {example}.") from None
            if minor <= 0:
                raise forms.ValidationError("Amounts must be positive.")
            amounts.append(minor)
        return amounts if self.many else (amounts[0] if amounts else None)

    def prepare_value(self, value):
        from billing.currency import from_minor

        if isinstance(value, list):
            return ", ".join(f"{from_minor(v, self.currency)}" for v in value)
        if isinstance(value, int):
            return f"{from_minor(value, self.currency)}"
        return value


class VirtualEndpointForm(forms.ModelForm):
    checkout_amounts = MoneyAmountsField(many=True, required=False, label="Checkout amounts",
                                         help_text="Top-up buttons on the checkout page, e.g. 10, 50, 100.")
    checkout_min_amount = MoneyAmountsField(label="Smallest custom amount")
    checkout_max_amount = MoneyAmountsField(label="Largest custom amount")
    low_balance_threshold = CreditsField(required=False, help_text="Credits. Alert below this balance; empty turns alerts off.")

    class Meta:
        model = VirtualEndpoint
        fields = ["name", "description", "allowed_models", "requests_per_minute", "tokens_per_minute",
                  "exhaustion_mode", "checkout_amounts", "checkout_min_amount", "checkout_max_amount",
                  "low_balance_threshold", "status", "portal_enabled", "portal_email", "portal_manage_keys"]
        widgets = {"allowed_models": forms.CheckboxSelectMultiple}
        help_texts = {"allowed_models": "Empty: none can be called yet."}

    def __init__(self, *args, organization: Organization, **kw):
        super().__init__(*args, **kw)
        self.instance.organization = organization
        self.fields["allowed_models"].queryset = LogicalModel.objects.filter(organization=organization)
        if self.initial.get("checkout_amounts") is None:
            self.initial["checkout_amounts"] = self.instance.checkout_amounts
        # Amounts are typed in the checkout currency's units, not cents (zero-decimal ones too).
        currency = ((self.instance.checkout_currencies or ["USD"])[0]).upper()
        for name in ("checkout_amounts", "checkout_min_amount", "checkout_max_amount"):
            if self.initial.get(name) is None:  # a new endpoint: the model's defaults
                self.initial[name] = getattr(self.instance, name)
            self.fields[name].currency = currency
            self.fields[name].label = f"{self.fields[name].label} ({currency})"
        self.fields["checkout_min_amount"].help_text = "For an amount the payer types."

    def clean(self):
        data = super().clean()
        low, high, presets = data.get("checkout_min_amount"), data.get("checkout_max_amount"), data.get("checkout_amounts")
        if low is not None and high is not None and low > high:
            self.add_error("checkout_max_amount", "Must be at least the smallest custom amount.")
        elif low is not None and high is not None and presets:
            outside = [p for p in presets if not low <= p <= high]
            if outside:
                from billing.currency import format_money

                currency = self.fields["checkout_amounts"].currency
                self.add_error("checkout_amounts", "Outside the custom range {}–{}: {}.".format(
                    format_money(low, currency), format_money(high, currency),
                    ", ".join(format_money(p, currency) for p in outside)))
        return data

    def clean_low_balance_threshold(self):
        return self.cleaned_data.get("low_balance_threshold") or 0

    def clean_name(self):
        name = self.cleaned_data["name"]
        clash = VirtualEndpoint.objects.filter(organization=self.instance.organization, name=name).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("A Virtual Endpoint with this name already exists.")
        return name


class GrantForm(forms.Form):
    credits = CreditsField(label="Credits to grant")
    note = forms.CharField(max_length=300, required=False, widget=forms.TextInput(attrs={"placeholder": "Why (shown in the ledger)"}))
    # One token per rendered form: a double-submitted grant posts once (ledger idempotency key).
    token = forms.CharField(widget=forms.HiddenInput, initial=lambda: secrets.token_hex(12), max_length=64)

    def clean_credits(self):
        micros = self.cleaned_data["credits"]
        if micros is None or micros <= 0:
            raise forms.ValidationError("Grant a positive amount.")
        return micros


class AccessKeyForm(forms.ModelForm):
    credit_limit = CreditsField(required=False, label="Credit limit", help_text="Credits this key may spend in all. Empty: no limit.")
    expires_at = forms.DateTimeField(
        required=False, label="Expires", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: never.",
    )

    class Meta:
        model = AccessKey
        fields = ["name", "credit_limit", "expires_at", "allowed_models", "enabled"]
        widgets = {"allowed_models": forms.CheckboxSelectMultiple}
        help_texts = {"allowed_models": "Empty: every model the VE allows."}

    def __init__(self, *args, virtual_endpoint: VirtualEndpoint, **kw):
        super().__init__(*args, **kw)
        self.instance.virtual_endpoint = virtual_endpoint
        self.fields["allowed_models"].queryset = virtual_endpoint.allowed_models.all()
        if not self.instance.pk:
            del self.fields["enabled"]

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value and not self.instance.pk and value <= timezone.now():
            raise forms.ValidationError("Pick a time in the future.")
        return value


class ExchangeRateForm(forms.ModelForm):
    effective_from = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: from now. Earlier rates stay in the history.",
    )

    class Meta:
        model = ExchangeRate
        fields = ["currency", "credits_per_unit", "effective_from"]
        help_texts = {"credits_per_unit": "Credits one unit of this currency is worth, e.g. 100000 for USD."}

    def clean_currency(self):
        return self.cleaned_data["currency"].upper()

    def clean_effective_from(self):
        return self.cleaned_data.get("effective_from") or timezone.now()


class OrganizationSettingsForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "markup", "alert_webhook_url", "pricing_public"]
        help_texts = {"markup": "Charge = cost in credits × markup, for models without a sale price. 1.2 = 20% margin."}

    def clean_alert_webhook_url(self):
        url = self.cleaned_data["alert_webhook_url"]
        netguard.validate_webhook_url(url)
        return url


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ["email", "role"]


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class RequestFilterForm(forms.Form):
    ve = forms.ModelChoiceField(queryset=VirtualEndpoint.objects.none(), required=False, label="Virtual Endpoint")
    key = forms.ModelChoiceField(queryset=AccessKey.objects.none(), required=False, label="Key")
    model = forms.CharField(required=False, label="Logical model")
    status = forms.ChoiceField(choices=[("", "Any status")] + list(RequestStatus.choices), required=False)
    run_id = forms.CharField(required=False, label="Run id")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, organization: Organization, **kw):
        super().__init__(*args, **kw)
        self.fields["ve"].queryset = VirtualEndpoint.objects.filter(organization=organization)
        self.fields["key"].queryset = AccessKey.objects.filter(virtual_endpoint__organization=organization).select_related("virtual_endpoint")
        self.fields["key"].label_from_instance = lambda k: f"{k.name} ({k.prefix}…)"
