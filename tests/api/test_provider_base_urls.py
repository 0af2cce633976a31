"""Provider base URLs (routing/models.py validate_base_url, tokenbill/netguard.py): service
names are accepted, cloud metadata addresses refused in every spelling and at every door
(services, API, console form, admin), private targets only where the operator allows."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from routing import services
from routing.models import Provider

METADATA_URLS = [
    "http://169.254.169.254/v1",
    "http://[fd00:ec2::254]/v1",
    "http://[::ffff:169.254.169.254]/v1",
    "http://[::ffff:a9fe:a9fe]/v1",
    "http://2852039166/v1",  # decimal
    "http://0251.0376.0251.0376/v1",  # octal
    "http://0xa9fea9fe/v1",  # hex
    "http://169.254.43518/v1",  # short form
    "http://metadata.google.internal/computeMetadata/v1",
    "http://METADATA.google.internal./v1",
    "http://[64:ff9b::a9fe:a9fe]/v1",  # NAT64
    "http://169.254.170.2/v2/credentials",  # ECS task credentials
]


def _create(org, base_url, **kw):
    return services.provider_create(organization=org, name=f"p-{abs(hash(base_url))}", kind="openai_compatible",
                                    base_url=base_url, **kw)


@pytest.mark.parametrize("url", ["http://vllm:8000/v1", "http://ollama:11434/v1", "http://my_vllm:8000/v1",
                                 "http://vllm.inference.svc.cluster.local:8000/v1", "https://api.openai.com/v1"])
def test_single_label_and_cluster_service_names_are_accepted(org, url):
    provider = _create(org, url)
    assert Provider.objects.get(pk=provider.pk).base_url == url


@pytest.mark.parametrize("url", METADATA_URLS)
def test_metadata_addresses_are_refused_even_where_private_targets_are_allowed(org, settings, url):
    settings.UPSTREAM_ALLOW_PRIVATE = True
    with pytest.raises(ValidationError) as refused:
        _create(org, url, allow_private_network=True)
    assert "cloud metadata address" in str(refused.value.message_dict["base_url"])
    assert not Provider.objects.exists()


@pytest.mark.parametrize("url", ["not a url", "ftp://vllm/v1", "http:///v1", "http://-vllm-:8000/v1",
                                 "http://vllm:99999/v1", "http://vl lm/v1"])
def test_malformed_urls_are_refused(org, url):
    with pytest.raises(ValidationError) as refused:
        _create(org, url)
    assert "base_url" in refused.value.message_dict


def test_private_literals_need_the_setting_or_the_providers_flag(org, settings):
    settings.UPSTREAM_ALLOW_PRIVATE = False
    for url in ("http://10.1.2.3:8000/v1", "http://127.0.0.1:8001/v1", "http://[::1]:8000/v1"):
        with pytest.raises(ValidationError) as refused:
            _create(org, url)
        assert "UPSTREAM_ALLOW_PRIVATE" in str(refused.value.message_dict["base_url"])
    assert _create(org, "http://10.1.2.3:8000/v1", allow_private_network=True).allow_private_network
    settings.UPSTREAM_ALLOW_PRIVATE = True
    assert _create(org, "http://127.0.0.1:8001/v1").base_url == "http://127.0.0.1:8001/v1"


def test_the_api_refuses_a_metadata_url_and_accepts_a_service_name(api):
    refused = api.post("/providers", {"name": "meta", "kind": "openai_compatible",
                                      "base_url": "http://[::ffff:a9fe:a9fe]/latest/meta-data/"})
    assert refused.status_code == 400 and "metadata" in str(refused.json()["errors"]["base_url"])
    accepted = api.post("/providers", {"name": "vllm", "kind": "openai_compatible", "base_url": "http://vllm:8000/v1"})
    assert accepted.status_code == 201, accepted.content
    # an update is checked the same way
    patched = api.patch(f"/providers/{accepted.json()['id']}", {"base_url": "http://0xa9fea9fe/v1"})
    assert patched.status_code == 400 and "metadata" in str(patched.json()["errors"]["base_url"])
    # the operator-only network fields are not the API's to set
    assert "allow_private_network" not in accepted.json() and "proxy_url" not in accepted.json()


def test_proxy_urls_are_checked(org):
    assert _create(org, "https://api.openai.com/v1", proxy_url="http://user:pw@proxy.corp:3128").proxy_url
    assert _create(org, "https://api.anthropic.com/v1", proxy_url="direct").proxy_url == "direct"
    with pytest.raises(ValidationError) as refused:
        _create(org, "https://x.example/v1", proxy_url="socks5://proxy.corp:1080")
    assert "proxy_url" in refused.value.message_dict
