"""Immutable, in-process views of the routing configuration (the gateway's L1 cache).

The gateway never reads SQL on its hot path: routing/cache.py builds one `Snapshot` from
the database when the configuration version moves, and every call reads from it. These
are plain frozen dataclasses so a snapshot can be shared by every task of a process and
swapped atomically (one attribute assignment).

Prices are Decimals (exact); credit amounts are int micro-credits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ProviderSnap:
    id: int
    name: str
    kind: str  # routing.models.ProviderKind
    base_url: str
    api_key: str = field(repr=False)  # decrypted; never log, never return
    api_version: str
    currency: str
    connect_timeout: float
    read_timeout: float  # silence between chunks once the answer started
    first_byte_timeout: float = 600.0  # from the request sent to the answer's first byte
    allow_private: bool = False  # the provider's operator-set flag (UPSTREAM_ALLOW_PRIVATE is read per call)
    proxy: str | None = None  # None: the environment's; "direct": none; else an http:// proxy URL


@dataclass(frozen=True, slots=True)
class PhysicalModelSnap:
    id: int
    upstream_model: str
    modality: str
    provider: ProviderSnap
    input_cost_per_mtok: Decimal
    cached_input_cost_per_mtok: Decimal
    cache_write_cost_per_mtok: Decimal
    output_cost_per_mtok: Decimal
    image_costs: dict  # {"1024x1024": {"standard": Decimal, ...}}
    audio_cost_per_second: Decimal
    # Resolved (routing/output_limits.py): how an OpenAI-format upstream takes an output
    # limit, and the model's own output cap (the worst case of a call naming no limit).
    limit_parameter: str = "max_tokens"
    max_output_tokens: int = 32_768


@dataclass(frozen=True, slots=True)
class RouteSnap:
    id: int
    priority: int
    weight: float  # only used to pick a route; never money
    physical_model: PhysicalModelSnap


@dataclass(frozen=True, slots=True)
class LogicalModelSnap:
    id: int
    organization_id: int
    name: str
    modality: str
    input_price_per_mtok: Decimal | None
    cached_input_price_per_mtok: Decimal | None
    cache_write_price_per_mtok: Decimal | None
    output_price_per_mtok: Decimal | None
    image_prices: dict
    price_per_second: Decimal | None
    default_max_output_tokens: int
    # Enabled routes to enabled physical models on enabled providers, sorted by priority.
    routes: tuple[RouteSnap, ...]
    # routing.models.UnsupportedParams: "drop" (and name them in a header) or "reject" (400).
    unsupported_params: str = "drop"
    fallback_on_timeout: bool = False  # a timeout after the request was sent may try the next route


@dataclass(frozen=True, slots=True)
class OrganizationSnap:
    id: int
    name: str
    markup: Decimal


@dataclass(frozen=True, slots=True)
class VirtualEndpointSnap:
    id: int
    public_id: str
    name: str
    organization: OrganizationSnap
    status: str
    exhaustion_mode: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    allowed_model_names: frozenset[str]
    low_balance_threshold: int


@dataclass(frozen=True, slots=True)
class AccessKeySnap:
    id: int
    name: str
    prefix: str
    virtual_endpoint_id: int
    enabled: bool
    expires_at: datetime | None
    credit_limit: int | None
    allowed_model_names: frozenset[str]  # empty: every model the VE allows


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    keys_by_hash: dict[str, AccessKeySnap]
    endpoints_by_id: dict[int, VirtualEndpointSnap]
    endpoints_by_public_id: dict[str, VirtualEndpointSnap]
    # (organization_id, logical model name) -> LogicalModelSnap
    logical_models: dict[tuple[int, str], LogicalModelSnap]
