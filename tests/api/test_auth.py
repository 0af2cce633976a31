from routing.models import ManagementToken, hash_secret
from routing.services import management_token_create, management_token_revoke
from tests.api.conftest import ApiClient


def test_requests_without_a_token_are_refused(db):
    # when
    response = ApiClient(None).get("/providers")
    # then
    assert response.status_code == 401


def test_unknown_token_is_refused(db):
    assert ApiClient("tbm_not-a-real-token").get("/providers").status_code == 401


def test_revoked_token_is_refused(org):
    # given
    token, secret = management_token_create(organization=org)
    assert ApiClient(secret).get("/providers").status_code == 200
    # when
    management_token_revoke(token=token)
    # then
    assert ApiClient(secret).get("/providers").status_code == 401


def test_token_is_stored_hashed_and_marked_used(org):
    # given
    token, secret = management_token_create(organization=org)
    # when
    ApiClient(secret).get("/providers")
    # then
    token.refresh_from_db()
    assert token.token_hash == hash_secret(secret) and secret not in token.token_hash
    assert token.prefix == secret[:10]
    assert token.last_used_at is not None
    assert not ManagementToken.objects.filter(token_hash=secret).exists()


def test_openapi_docs_are_served(client, db):
    # when
    schema = client.get("/api/v1/openapi.json")
    docs = client.get("/api/v1/docs")
    # then
    assert schema.status_code == 200 and docs.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/api/v1/providers", "/api/v1/physical-models", "/api/v1/logical-models",
                 "/api/v1/virtual-endpoints", "/api/v1/virtual-endpoints/{ve_id}/keys",
                 "/api/v1/virtual-endpoints/{ve_id}/grants", "/api/v1/exchange-rates/{currency}"):
        assert path in paths
