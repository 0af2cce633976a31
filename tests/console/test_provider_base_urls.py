"""The console's provider form and connection test refuse cloud metadata addresses
(routing/models.py validate_base_url; console/views/providers.py) and accept service names."""

from __future__ import annotations

from django.urls import reverse

from routing import services
from routing.models import Provider


def _create(org, base_url, **kw):
    return services.provider_create(organization=org, name="p", kind="openai_compatible", base_url=base_url, **kw)


def test_the_console_form_shows_the_refusal_and_accepts_a_service_name(owner_client, org):
    form = {"name": "vllm", "kind": "openai_compatible", "base_url": "http://169.254.169.254/v1", "api_key": "",
            "currency": "USD", "connect_timeout": "5", "first_byte_timeout": "600", "read_timeout": "60", "enabled": "on"}
    refused = owner_client.post(reverse("console:provider_new"), form)
    assert refused.status_code == 422 and b"cloud metadata address" in refused.content
    assert not Provider.objects.filter(organization=org).exists()
    accepted = owner_client.post(reverse("console:provider_new"), {**form, "base_url": "http://vllm:8000/v1"})
    assert accepted.status_code == 302
    assert Provider.objects.get(organization=org).base_url == "http://vllm:8000/v1"


def test_the_connection_test_refuses_a_name_that_resolves_to_metadata(owner_client, org, monkeypatch):
    provider = _create(org, "http://cloudy.test:8000/v1")
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: [(2, 1, 6, "", ("169.254.169.254", 8000))])
    response = owner_client.post(reverse("console:provider_test", args=[provider.pk]), HTTP_HX_REQUEST="true")
    assert b"cloud metadata address" in response.content


