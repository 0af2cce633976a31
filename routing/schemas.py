"""Management API shapes for routing resources.

Money and prices travel as decimal strings ("0.15", "1234.5"), never floats: inputs are
parsed into Decimal, credit amounts are shown with billing.money.format_credits.
Secrets are input-only fields (`api_key`) or appear exactly once (`key` on creation).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from ninja import Field, Schema
from pydantic import PlainSerializer

from billing.money import format_credits
from routing.models import ExhaustionMode, EndpointStatus, Modality, OutputLimitParameter, ProviderKind


def decimal_text(value: Decimal | None) -> str | None:
    """'0.1500000000' -> '0.15'; exact, no exponent."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


DecimalText = Annotated[Decimal, PlainSerializer(decimal_text, return_type=str)]
OptionalDecimalText = Annotated[Decimal | None, PlainSerializer(decimal_text, return_type=str | None)]
NonNegative = Annotated[Decimal, Field(ge=0, max_digits=30, decimal_places=10)]

ProviderKindT = Literal[tuple(ProviderKind.values)]  # type: ignore[valid-type]
ModalityT = Literal[tuple(Modality.values)]  # type: ignore[valid-type]
LimitParameterT = Literal[tuple(OutputLimitParameter.values)]  # type: ignore[valid-type]
ExhaustionModeT = Literal[tuple(ExhaustionMode.values)]  # type: ignore[valid-type]
StatusT = Literal[tuple(EndpointStatus.values)]  # type: ignore[valid-type]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
# Ids fit a signed 64-bit column; anything larger is a 422, not a database overflow.
DbId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class ErrorOut(Schema):
    detail: str
    errors: dict[str, list[str]] = {}


# --- providers ------------------------------------------------------------------------

class ProviderOut(Schema):
    id: int
    name: str
    kind: str
    base_url: str
    api_version: str
    currency: str
    connect_timeout: float
    first_byte_timeout: float
    read_timeout: float
    enabled: bool
    has_credentials: bool
    created_at: datetime
    updated_at: datetime


class ProviderIn(Schema):
    name: str = Field(min_length=1, max_length=120)
    kind: ProviderKindT
    base_url: str
    api_key: str = Field("", description="Write-only: stored encrypted, never returned.")
    api_version: str = ""
    currency: Currency = "USD"
    connect_timeout: float = Field(10.0, gt=0)
    first_byte_timeout: float = Field(600.0, gt=0, description="Seconds from the request sent to the first byte.")
    read_timeout: float = Field(120.0, gt=0, description="Seconds of silence between chunks after the first byte.")
    enabled: bool = True


class ProviderPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=120)
    kind: ProviderKindT | None = None
    base_url: str | None = None
    api_key: str | None = Field(None, description="Write-only; empty or absent keeps the stored key.")
    api_version: str | None = None
    currency: Currency | None = None
    connect_timeout: float | None = Field(None, gt=0)
    first_byte_timeout: float | None = Field(None, gt=0)
    read_timeout: float | None = Field(None, gt=0)
    enabled: bool | None = None


# --- physical models ------------------------------------------------------------------

class PhysicalModelOut(Schema):
    id: int
    provider_id: int
    upstream_model: str
    modality: str
    input_cost_per_mtok: DecimalText
    cached_input_cost_per_mtok: DecimalText
    cache_write_cost_per_mtok: DecimalText
    output_cost_per_mtok: DecimalText
    image_costs: dict
    audio_cost_per_second: DecimalText
    output_limit_parameter: str
    max_output_tokens: int | None
    enabled: bool


class PhysicalModelIn(Schema):
    provider_id: DbId
    upstream_model: str = Field(min_length=1, max_length=200)
    modality: ModalityT = "chat"
    input_cost_per_mtok: NonNegative = Decimal("0")
    cached_input_cost_per_mtok: NonNegative = Decimal("0")
    cache_write_cost_per_mtok: NonNegative = Decimal("0")
    output_cost_per_mtok: NonNegative = Decimal("0")
    image_costs: dict = {}
    audio_cost_per_second: NonNegative = Decimal("0")
    output_limit_parameter: LimitParameterT = Field("", description="'' (by model name), max_tokens or "
                                                    "max_completion_tokens (OpenAI reasoning models).")
    max_output_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="The model's output cap; "
                                          "null: by model name.")
    enabled: bool = True


class PhysicalModelPatch(Schema):
    upstream_model: str | None = Field(None, min_length=1, max_length=200)
    modality: ModalityT | None = None
    input_cost_per_mtok: NonNegative | None = None
    cached_input_cost_per_mtok: NonNegative | None = None
    cache_write_cost_per_mtok: NonNegative | None = None
    output_cost_per_mtok: NonNegative | None = None
    image_costs: dict | None = None
    audio_cost_per_second: NonNegative | None = None
    output_limit_parameter: LimitParameterT | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    enabled: bool | None = None


# --- logical models -------------------------------------------------------------------

class RouteIn(Schema):
    physical_model_id: DbId
    priority: int = Field(0, ge=0, le=32767, description="Tier: lower is tried first.")
    weight: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=4)] = Field(
        Decimal("1"), description="Share of traffic inside its tier."
    )
    enabled: bool = True


class RouteOut(Schema):
    physical_model_id: int
    priority: int
    weight: DecimalText
    enabled: bool


class LogicalModelOut(Schema):
    id: int
    name: str
    description: str
    modality: str
    input_price_per_mtok: OptionalDecimalText
    cached_input_price_per_mtok: OptionalDecimalText
    cache_write_price_per_mtok: OptionalDecimalText
    output_price_per_mtok: OptionalDecimalText
    image_prices: dict
    price_per_second: OptionalDecimalText
    default_max_output_tokens: int
    unsupported_params: str
    fallback_on_timeout: bool
    enabled: bool
    routes: list[RouteOut]

    @staticmethod
    def resolve_routes(obj) -> list[dict]:
        return [
            {"physical_model_id": r.physical_model_id, "priority": r.priority, "weight": r.weight, "enabled": r.enabled}
            for r in obj.routes.all()
        ]


_SALE_PRICE = Annotated[Decimal, Field(ge=0, max_digits=24, decimal_places=8)]


class LogicalModelIn(Schema):
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    modality: ModalityT = "chat"
    input_price_per_mtok: _SALE_PRICE | None = Field(None, description="Credits per 1M input tokens.")
    cached_input_price_per_mtok: _SALE_PRICE | None = None
    cache_write_price_per_mtok: _SALE_PRICE | None = None
    output_price_per_mtok: _SALE_PRICE | None = Field(None, description="Credits per 1M output tokens.")
    image_prices: dict = {}
    price_per_second: _SALE_PRICE | None = None
    default_max_output_tokens: int = Field(4096, ge=1, le=2**31 - 1)
    unsupported_params: Literal["drop", "reject"] = Field(
        "drop", description="A parameter the serving provider cannot take: drop it (x-tokenbill-dropped-params) "
                            "or refuse with a 400.")
    fallback_on_timeout: bool = Field(False, description="Try the next route after a timeout once the request "
                                      "reached the upstream (it may still be billed there).")
    enabled: bool = True
    routes: list[RouteIn] = []


class LogicalModelPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = None
    modality: ModalityT | None = None
    input_price_per_mtok: _SALE_PRICE | None = None
    cached_input_price_per_mtok: _SALE_PRICE | None = None
    cache_write_price_per_mtok: _SALE_PRICE | None = None
    output_price_per_mtok: _SALE_PRICE | None = None
    image_prices: dict | None = None
    price_per_second: _SALE_PRICE | None = None
    default_max_output_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    unsupported_params: Literal["drop", "reject"] | None = None
    fallback_on_timeout: bool | None = None
    enabled: bool | None = None
    routes: list[RouteIn] | None = Field(None, description="Replaces every route when given.")


# --- virtual endpoints ----------------------------------------------------------------

class EndpointOut(Schema):
    id: str = Field(alias="public_id")
    name: str
    description: str
    allowed_models: list[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    exhaustion_mode: str
    checkout_amounts: list[int]
    checkout_currencies: list[str]
    checkout_min_amount: int
    checkout_max_amount: int
    low_balance_threshold: str
    status: str
    credit_budget: str
    credit_spend: str
    balance: str
    created_at: datetime

    @staticmethod
    def resolve_allowed_models(obj) -> list[str]:
        return sorted(m.name for m in obj.allowed_models.all())

    @staticmethod
    def resolve_low_balance_threshold(obj) -> str:
        return format_credits(obj.low_balance_threshold)

    @staticmethod
    def resolve_credit_budget(obj) -> str:
        return format_credits(obj.credit_budget)

    @staticmethod
    def resolve_credit_spend(obj) -> str:
        return format_credits(obj.credit_spend)

    @staticmethod
    def resolve_balance(obj) -> str:
        return format_credits(obj.balance)


# At most 10^12 credits with 6 decimals: the micro-credit value fits a 64-bit column.
_CREDITS = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=6)]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]


class EndpointIn(Schema):
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    allowed_models: list[str] = Field([], description="Logical model names of this organization.")
    requests_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    tokens_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    exhaustion_mode: ExhaustionModeT = "error"
    checkout_amounts: list[Annotated[int, Field(gt=0, le=2**31 - 1)]] | None = None
    checkout_currencies: list[Currency] | None = None
    checkout_min_amount: Int32 | None = None
    checkout_max_amount: Int32 | None = None
    low_balance_threshold: _CREDITS = Field(Decimal("0"), description="Credits; 0 turns alerts off.")
    status: StatusT = "active"


class EndpointPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = None
    allowed_models: list[str] | None = None
    requests_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    tokens_per_minute: int | None = Field(None, ge=1, le=2**31 - 1)
    exhaustion_mode: ExhaustionModeT | None = None
    checkout_amounts: list[Annotated[int, Field(gt=0, le=2**31 - 1)]] | None = None
    checkout_currencies: list[Currency] | None = None
    checkout_min_amount: Int32 | None = None
    checkout_max_amount: Int32 | None = None
    low_balance_threshold: _CREDITS | None = None
    status: StatusT | None = None


# --- access keys ----------------------------------------------------------------------

class KeyOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    enabled: bool
    credit_limit: str | None
    credit_spend: str
    allowed_models: list[str]

    @staticmethod
    def resolve_credit_limit(obj) -> str | None:
        return None if obj.credit_limit is None else format_credits(obj.credit_limit)

    @staticmethod
    def resolve_credit_spend(obj) -> str:
        return format_credits(obj.credit_spend)

    @staticmethod
    def resolve_allowed_models(obj) -> list[str]:
        return sorted(m.name for m in obj.allowed_models.all())


class KeyCreatedOut(KeyOut):
    key: str = Field(description="The secret. Shown only in this response; store it now.")


class KeyIn(Schema):
    name: str = Field(min_length=1, max_length=120)
    expires_at: datetime | None = None
    enabled: bool = True
    credit_limit: _CREDITS | None = Field(None, description="Credits this key may spend in all.")
    allowed_models: list[str] = Field([], description="Empty: every model the VE allows.")


class KeyPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=120)
    expires_at: datetime | None = None
    enabled: bool | None = None
    credit_limit: _CREDITS | None = None
    allowed_models: list[str] | None = None
