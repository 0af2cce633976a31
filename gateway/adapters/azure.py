"""Azure OpenAI: the OpenAI wire format behind a deployment URL, an api-version and an
`api-key` header. The physical model's upstream_model is the deployment name."""

from __future__ import annotations

from gateway.adapters.base import HttpCall, register
from gateway.adapters.openai import OpenAIAdapter
from routing.snapshot import PhysicalModelSnap

DEFAULT_API_VERSION = "2024-10-21"
# stream_options arrived with api-version 2024-09-01-preview (GA in 2024-10-21); older ones
# refuse it with 400 "Unrecognized request argument supplied: stream_options"
# (openai/openai-python#1469, griptape-ai/griptape#1640). There the usage is counted instead.
STREAM_OPTIONS_SINCE = "2024-09-01"


def takes_stream_options(api_version: str) -> bool:
    return api_version[:10] >= STREAM_OPTIONS_SINCE


@register("azure_openai")
class AzureOpenAIAdapter(OpenAIAdapter):
    def headers(self, target: PhysicalModelSnap) -> dict[str, str]:
        return {"api-key": target.provider.api_key, "Content-Type": "application/json"}

    def chat_request(self, target: PhysicalModelSnap, body: dict, *, stream: bool) -> HttpCall:
        if stream and not takes_stream_options(target.provider.api_version or DEFAULT_API_VERSION):
            body = {k: v for k, v in body.items() if k != "stream_options"}
            return HttpCall("POST", self.url(target, "chat/completions"), self.headers(target), body)
        return super().chat_request(target, body, stream=stream)

    def url(self, target: PhysicalModelSnap, endpoint: str) -> str:
        base = target.provider.base_url
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        version = target.provider.api_version or DEFAULT_API_VERSION
        return f"{base}/openai/deployments/{target.upstream_model}/{endpoint}?api-version={version}"
