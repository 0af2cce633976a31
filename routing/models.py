"""Tenancy and configuration: organizations, providers, models, routes, Virtual Endpoints, keys.

Everything here belongs to exactly one Organization. Money columns on VirtualEndpoint and
AccessKey are integer micro-credits (see billing/money.py); they are maintained only by
billing's ledger and budget services, never written directly.
"""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from routing import crypto
from tokenbill import netguard


def _random_token(nbytes: int) -> str:
    return secrets.token_urlsafe(nbytes).replace("-", "x").replace("_", "y")


def hash_secret(secret: str) -> str:
    """Access keys and API tokens are 240-bit random strings, so one SHA-256 is enough
    (no slow KDF: they are looked up on every call, and cannot be brute-forced)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


ROLE_RANK = {Role.VIEWER: 0, Role.DEVELOPER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Organization(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=64, unique=True)
    # Charge = cost in credits x markup, for logical models without their own sale price.
    markup = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("1"), validators=[MinValueValidator(Decimal("0"))]
    )
    alert_webhook_url = models.URLField(blank=True, help_text="Receives signed low-balance alerts.")
    alert_webhook_secret = models.CharField(max_length=64, blank=True, default="")
    pricing_public = models.BooleanField(
        default=False, help_text="Publish the prices of every model that can be bought at /pricing/<slug>."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=Q(markup__gte=0), name="org_markup_non_negative")]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    def can(self, role: str) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]


class ManagementToken(models.Model):
    """Bearer token for the management API, scoped to one organization. Stored hashed."""

    PREFIX = "tbm_"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="management_tokens")
    name = models.CharField(max_length=120, default="default")
    prefix = models.CharField(max_length=16, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @classmethod
    def new_secret(cls) -> str:
        return cls.PREFIX + _random_token(30)


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (DeepSeek, Qwen, Kimi, vLLM, Ollama, …)"


currency_validator = RegexValidator(r"^[A-Z]{3}$", "Use a three-letter ISO 4217 code such as USD.")


def validate_base_url(url: str) -> None:
    """An http(s) URL whose host may be a single label (a docker-compose or Kubernetes service
    name: Django's URLValidator refuses those) and is never a cloud metadata address, in any
    spelling. Private targets are the provider's clean() (they depend on its flag)."""
    problem = netguard.upstream_url_problem(url, allow_private=True)
    if problem:
        raise ValidationError(problem, code="invalid_base_url")


def validate_proxy_url(url: str) -> None:
    if url and url != "direct":
        problem = netguard.upstream_url_problem(url, allow_private=True)
        if problem or not url.startswith("http://"):
            raise ValidationError('An http://[user:password@]host:port proxy, "direct", or empty (the environment).',
                                  code="invalid_proxy_url")


class Provider(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=24, choices=ProviderKind.choices)
    base_url = models.CharField(max_length=500, validators=[validate_base_url])
    # Operator-only network settings (the Django admin; not in the merchants' console or API):
    # a private upstream for this provider alone, and its egress proxy.
    allow_private_network = models.BooleanField(
        default=False, help_text="Allow a private, loopback or link-local upstream for this provider "
                                 "(UPSTREAM_ALLOW_PRIVATE allows it for all). Metadata addresses stay refused.")
    proxy_url = models.CharField(
        max_length=500, blank=True, default="", validators=[validate_proxy_url],
        help_text='Empty: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment; "direct": no proxy; '
                  "or http://[user:password@]host:port.")
    # Fernet token; write-only through set_credentials(), never rendered or returned.
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    api_version = models.CharField(max_length=40, blank=True, default="", help_text="Azure OpenAI api-version.")
    currency = models.CharField(max_length=3, default="USD", validators=[currency_validator])
    # Timeouts, seconds: connecting; from the request sent to the answer's first byte (a
    # reasoning model thinks for minutes before it); silence between chunks after that.
    connect_timeout = models.FloatField(default=10.0, validators=[MinValueValidator(0.1)])
    first_byte_timeout = models.FloatField(
        default=600.0, validators=[MinValueValidator(0.1)],
        help_text="Seconds from the request sent to the answer's first byte (reasoning models: minutes).")
    read_timeout = models.FloatField(
        default=120.0, validators=[MinValueValidator(0.1)],
        help_text="Seconds of silence allowed between chunks once the answer has started.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="provider_name_unique")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        allow = self.allow_private_network or settings.UPSTREAM_ALLOW_PRIVATE
        problem = netguard.upstream_url_problem(self.base_url or "", allow_private=allow)
        if problem and not allow and netguard.upstream_url_problem(self.base_url or "", allow_private=True) is None:
            raise ValidationError({"base_url": problem})  # (the other problems are the field's own)

    def set_credentials(self, api_key: str) -> None:
        self.credentials_encrypted = crypto.encrypt(api_key)

    def get_credentials(self) -> str:
        return crypto.decrypt(self.credentials_encrypted)

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)


class Modality(models.TextChoices):
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"
    IMAGE = "image", "Image"
    SPEECH = "speech", "Speech"
    TRANSCRIPTION = "transcription", "Transcription"


def _price_field(help_text: str):
    return models.DecimalField(
        max_digits=20, decimal_places=10, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))],
        help_text=help_text,
    )


def _sale_price_field(help_text: str):
    return models.DecimalField(
        max_digits=24, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))],
        help_text=help_text,
    )


class OutputLimitParameter(models.TextChoices):
    AUTO = "", "By model name"
    MAX_TOKENS = "max_tokens", "max_tokens"
    MAX_COMPLETION_TOKENS = "max_completion_tokens", "max_completion_tokens (OpenAI reasoning models)"


class PhysicalModel(models.Model):
    """One model on one provider, with its cost per unit in the provider's currency."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="physical_models")
    upstream_model = models.CharField(max_length=200, help_text="Model name, or deployment name on Azure.")
    modality = models.CharField(max_length=16, choices=Modality.choices, default=Modality.CHAT)
    input_cost_per_mtok = _price_field("Cost per 1M input tokens, provider currency.")
    cached_input_cost_per_mtok = _price_field("Cost per 1M cached input tokens, provider currency.")
    cache_write_cost_per_mtok = _price_field("Cost per 1M cache-creation tokens, provider currency.")
    output_cost_per_mtok = _price_field("Cost per 1M output tokens, provider currency.")
    # {"1024x1024": {"standard": "0.04", "hd": "0.08"}, ...}: decimal strings, provider currency.
    image_costs = models.JSONField(default=dict, blank=True)
    audio_cost_per_second = _price_field("Cost per second of audio, provider currency.")
    # Output limits (routing/output_limits.py): empty = the default by upstream model name.
    output_limit_parameter = models.CharField(
        max_length=32, blank=True, default="", choices=OutputLimitParameter.choices,
        help_text="How an output limit is sent to an OpenAI-format upstream; empty: by model name "
                  "(max_completion_tokens for o1/o3/o4/gpt-5 reasoning models).")
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="The model's own output cap; empty: by model name. Sizes the hold of a call that "
                  "names no limit, and is Anthropic's required max_tokens then.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__name", "upstream_model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "upstream_model"], name="physical_model_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.upstream_model} @ {self.provider.name}"


class UnsupportedParams(models.TextChoices):
    DROP = "drop", "Drop and report in a header"
    REJECT = "reject", "Refuse with a 400"


class LogicalModel(models.Model):
    """The name API users put in "model"; routes decide which physical models serve it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="logical_models")
    name = models.CharField(
        max_length=120, validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$", "Letters, digits and ._:/@- only.")]
    )
    description = models.CharField(max_length=300, blank=True, default="")
    modality = models.CharField(max_length=16, choices=Modality.choices, default=Modality.CHAT)
    # Sale prices in credits; when unset the charge is cost-in-credits x organization markup.
    input_price_per_mtok = _sale_price_field("Credits per 1M input tokens.")
    cached_input_price_per_mtok = _sale_price_field("Credits per 1M cached input tokens.")
    cache_write_price_per_mtok = _sale_price_field("Credits per 1M cache-creation tokens.")
    output_price_per_mtok = _sale_price_field("Credits per 1M output tokens.")
    image_prices = models.JSONField(default=dict, blank=True, help_text="Credits per image by size and quality.")
    price_per_second = _sale_price_field("Credits per second of audio.")
    default_max_output_tokens = models.PositiveIntegerField(default=4096)
    unsupported_params = models.CharField(
        max_length=8, choices=UnsupportedParams.choices, default=UnsupportedParams.DROP,
        help_text="A request parameter the serving provider cannot take: drop it (named in the "
                  "x-tokenbill-dropped-params response header) or refuse the call with a 400.")
    fallback_on_timeout = models.BooleanField(
        default=False, help_text="Try the next route after a timeout once the request reached the upstream "
                                 "(the timed-out call may still be billed by the provider).")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="logical_model_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def has_sale_price(self) -> bool:
        return any(
            p is not None
            for p in (self.input_price_per_mtok, self.output_price_per_mtok, self.price_per_second)
        ) or bool(self.image_prices)


class Route(models.Model):
    logical_model = models.ForeignKey(LogicalModel, on_delete=models.CASCADE, related_name="routes")
    physical_model = models.ForeignKey(PhysicalModel, on_delete=models.CASCADE, related_name="routes")
    # Lower priority numbers are tried first; weight is the share of traffic inside a tier.
    priority = models.PositiveSmallIntegerField(default=0)
    weight = models.DecimalField(
        max_digits=10, decimal_places=4, default=Decimal("1"), validators=[MinValueValidator(Decimal("0"))]
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "-weight", "id"]
        constraints = [
            models.UniqueConstraint(fields=["logical_model", "physical_model"], name="route_unique"),
            models.CheckConstraint(condition=Q(weight__gte=0), name="route_weight_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.logical_model} -> {self.physical_model} (p{self.priority}, w{self.weight})"


class ExhaustionMode(models.TextChoices):
    ERROR = "error", "HTTP 429 error with a checkout link"
    MESSAGE = "message", "Assistant message with a checkout link"


class EndpointStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


def default_checkout_amounts() -> list[int]:
    return [1000, 5000, 10000]  # minor units of the checkout currency: $10, $50, $100


def default_checkout_currencies() -> list[str]:
    return ["USD"]


def new_ve_id() -> str:
    return "ve_" + secrets.token_hex(8)


class VirtualEndpoint(models.Model):
    """An isolated credit pool with its own keys.

    credit_budget is everything ever granted or paid in, credit_spend everything ever
    charged, credit_reserved what calls in flight hold; all three are micro-credits kept
    equal to ledger sums by billing (budget.py, ledger.py). balance = budget - spend.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="virtual_endpoints")
    public_id = models.CharField(max_length=32, unique=True, default=new_ve_id, editable=False)
    name = models.CharField(max_length=120)
    description = models.CharField(max_length=300, blank=True, default="")
    allowed_models = models.ManyToManyField(LogicalModel, blank=True, related_name="virtual_endpoints")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    exhaustion_mode = models.CharField(max_length=16, choices=ExhaustionMode.choices, default=ExhaustionMode.ERROR)
    checkout_amounts = models.JSONField(default=default_checkout_amounts, blank=True)
    checkout_currencies = models.JSONField(default=default_checkout_currencies, blank=True)
    checkout_min_amount = models.PositiveIntegerField(default=500, help_text="Minor units; custom amounts.")
    checkout_max_amount = models.PositiveIntegerField(default=100000, help_text="Minor units; custom amounts.")
    low_balance_threshold = models.BigIntegerField(default=0, help_text="Micro-credits; 0 turns alerts off.")
    low_balance_alerted = models.BooleanField(default=False, editable=False)
    status = models.CharField(max_length=16, choices=EndpointStatus.choices, default=EndpointStatus.ACTIVE)
    # The customer portal (billing/portal.py): the person who pays signs in with a magic link
    # sent to portal_email or to a receipt email of a paid top-up of this VE.
    portal_enabled = models.BooleanField(default=False, help_text="Let the customer who pays see this endpoint's "
                                         "balance, usage, payments and receipts at /portal/.")
    portal_email = models.EmailField(blank=True, default="", help_text="Also let this address sign in to the portal.")
    portal_manage_keys = models.BooleanField(default=False, help_text="Let the customer create and disable keys.")
    credit_budget = models.BigIntegerField(default=0, editable=False)
    credit_spend = models.BigIntegerField(default=0, editable=False)
    credit_reserved = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="ve_name_unique"),
            models.CheckConstraint(condition=Q(credit_spend__lte=models.F("credit_budget")), name="ve_spend_within_budget"),
            models.CheckConstraint(condition=Q(credit_reserved__gte=0), name="ve_reserved_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"

    @property
    def balance(self) -> int:
        return self.credit_budget - self.credit_spend


class AccessKey(models.Model):
    """A secret bound to one VE. Only its SHA-256 is stored; the secret is shown once."""

    PREFIX = "tb-"

    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=120)
    prefix = models.CharField(max_length=16, editable=False, help_text="Visible start of the key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    credit_limit = models.BigIntegerField(null=True, blank=True, help_text="Micro-credits this key may spend in all.")
    credit_spend = models.BigIntegerField(default=0, editable=False)
    credit_reserved = models.BigIntegerField(default=0, editable=False)
    allowed_models = models.ManyToManyField(LogicalModel, blank=True, related_name="access_keys")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(credit_limit__isnull=True) | Q(credit_limit__gte=0), name="key_limit_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def new_secret(cls) -> str:
        return cls.PREFIX + _random_token(30)


class ConfigVersion(models.Model):
    """One row whose counter moves on every configuration change.

    Gateway processes poll it (embedded default) or listen on Redis pub/sub to know
    when to rebuild their in-process routing snapshot.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)
