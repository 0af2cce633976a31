from routing.models import Provider
from tests import factories

PROVIDER = {"name": "OpenAI prod", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-secret-123"}


def test_provider_create_encrypts_key_and_never_returns_it(api, org):
    # when
    response = api.post("/providers", PROVIDER)
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_credentials"] is True and body["name"] == "OpenAI prod"
    assert "sk-secret-123" not in response.content.decode()
    assert "api_key" not in body and "credentials_encrypted" not in body
    provider = Provider.objects.get(pk=body["id"])
    assert provider.organization == org
    assert "sk-secret-123" not in provider.credentials_encrypted
    assert provider.get_credentials() == "sk-secret-123"


def test_provider_list_get_never_show_the_key(api):
    # given
    pid = api.post("/providers", PROVIDER).json()["id"]
    # when
    listing = api.get("/providers")
    one = api.get(f"/providers/{pid}")
    # then
    assert [p["id"] for p in listing.json()] == [pid]
    assert one.json()["has_credentials"] is True
    assert "sk-secret-123" not in listing.content.decode() + one.content.decode()


def test_provider_update_with_empty_key_keeps_the_old_one(api):
    # given
    pid = api.post("/providers", PROVIDER).json()["id"]
    # when
    response = api.patch(f"/providers/{pid}", {"api_key": "", "read_timeout": 30})
    # then
    assert response.status_code == 200
    provider = Provider.objects.get(pk=pid)
    assert provider.get_credentials() == "sk-secret-123" and provider.read_timeout == 30


def test_provider_update_replaces_key(api):
    pid = api.post("/providers", PROVIDER).json()["id"]
    api.patch(f"/providers/{pid}", {"api_key": "sk-new"})
    assert Provider.objects.get(pk=pid).get_credentials() == "sk-new"


def test_provider_validation_errors_are_4xx(api):
    # unknown kind, bad currency: schema (422); bad URL: model rule (400)
    assert api.post("/providers", {**PROVIDER, "kind": "nope"}).status_code == 422
    assert api.post("/providers", {**PROVIDER, "currency": "usd"}).status_code == 422
    bad_url = api.post("/providers", {**PROVIDER, "base_url": "not a url"})
    assert bad_url.status_code == 400
    assert "base_url" in bad_url.json()["errors"]


def test_duplicate_provider_name_is_a_conflict(api):
    api.post("/providers", PROVIDER)
    response = api.post("/providers", PROVIDER)
    assert response.status_code == 409
    assert response.json()["detail"]


def test_other_organizations_provider_is_404(api, other_org):
    # given
    foreign = factories.make_provider(other_org, api_key="sk-foreign")
    # then
    assert api.get(f"/providers/{foreign.pk}").status_code == 404
    assert api.patch(f"/providers/{foreign.pk}", {"enabled": False}).status_code == 404
    assert api.delete(f"/providers/{foreign.pk}").status_code == 404
    assert Provider.objects.filter(pk=foreign.pk, enabled=True).exists()
    assert api.get("/providers").json() == []


def test_provider_delete(api):
    pid = api.post("/providers", PROVIDER).json()["id"]
    assert api.delete(f"/providers/{pid}").status_code == 204
    assert api.get(f"/providers/{pid}").status_code == 404
