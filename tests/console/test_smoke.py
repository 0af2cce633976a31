import pytest
from django.urls import reverse


@pytest.mark.parametrize("name", ["home", "providers", "models", "endpoints", "requests", "rates", "org_settings", "members", "playground"])
def test_every_page_renders_for_owner(owner_client, world, name):
    response = owner_client.get(reverse(f"console:{name}"))
    assert response.status_code == 200, response.content[:2000]
