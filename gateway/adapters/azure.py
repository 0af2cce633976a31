"""Azure OpenAI: the OpenAI wire format behind a deployment URL, an api-version and an
`api-key` header. The physical model's upstream_model is the deployment name."""

from __future__ import annotations

from gateway.adapters.base import register
from gateway.adapters.openai import OpenAIAdapter
from routing.snapshot import PhysicalModelSnap

DEFAULT_API_VERSION = "2024-10-21"


@register("azure_openai")
class AzureOpenAIAdapter(OpenAIAdapter):
    def headers(self, target: PhysicalModelSnap) -> dict[str, str]:
        return {"api-key": target.provider.api_key, "Content-Type": "application/json"}

    def url(self, target: PhysicalModelSnap, endpoint: str) -> str:
        base = target.provider.base_url
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        version = target.provider.api_version or DEFAULT_API_VERSION
        return f"{base}/openai/deployments/{target.upstream_model}/{endpoint}?api-version={version}"
