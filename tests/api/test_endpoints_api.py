from billing.models import LedgerEntry
from routing.models import AccessKey, VirtualEndpoint, hash_secret
from tests import factories


def test_endpoint_create_returns_public_id_and_credit_strings(api, org):
    # given
    factories.make_logical_model(org, "chat")
    # when
    response = api.post("/virtual-endpoints", {"name": "Shop", "allowed_models": ["chat"],
                                               "low_balance_threshold": "12.5"})
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"].startswith("ve_")
    assert (body["credit_budget"], body["credit_spend"], body["balance"]) == ("0", "0", "0")
    assert body["allowed_models"] == ["chat"] and body["low_balance_threshold"] == "12.5"
    assert VirtualEndpoint.objects.get(public_id=body["id"]).low_balance_threshold == 12_500_000


def test_endpoint_unknown_or_foreign_model_name_is_400(api, other_org):
    factories.make_logical_model(other_org, "theirs")
    response = api.post("/virtual-endpoints", {"name": "x", "allowed_models": ["theirs"]})
    assert response.status_code == 400 and "allowed_models" in response.json()["errors"]


def test_endpoint_list_get_patch_delete(api, org):
    # given
    factories.make_logical_model(org, "a")
    factories.make_logical_model(org, "b")
    ve_id = api.post("/virtual-endpoints", {"name": "E", "allowed_models": ["a"]}).json()["id"]
    # when
    patched = api.patch(f"/virtual-endpoints/{ve_id}", {"allowed_models": ["a", "b"], "status": "suspended",
                                                         "requests_per_minute": 60})
    # then
    assert patched.status_code == 200
    assert patched.json()["allowed_models"] == ["a", "b"] and patched.json()["status"] == "suspended"
    assert [e["id"] for e in api.get("/virtual-endpoints").json()] == [ve_id]
    assert api.get(f"/virtual-endpoints/{ve_id}").json()["requests_per_minute"] == 60
    assert api.delete(f"/virtual-endpoints/{ve_id}").status_code == 204
    assert api.get(f"/virtual-endpoints/{ve_id}").status_code == 404


def test_endpoint_with_ledger_history_cannot_be_deleted(api, org):
    ve = factories.make_ve(org, credits=5)
    response = api.delete(f"/virtual-endpoints/{ve.public_id}")
    assert response.status_code == 409
    assert VirtualEndpoint.objects.filter(pk=ve.pk).exists()


def test_endpoint_patch_does_not_overwrite_counters(api, org):
    # given: the ledger moved the budget after the API read the row
    ve = factories.make_ve(org, credits=7)
    # when
    api.patch(f"/virtual-endpoints/{ve.public_id}", {"description": "new"})
    # then
    ve.refresh_from_db()
    assert ve.credit_budget == 7_000_000 and ve.description == "new"


def test_foreign_endpoint_is_404_everywhere(api, other_org):
    ve = factories.make_ve(other_org, credits=1)
    key, _ = factories.make_key(ve)
    for path in (f"/virtual-endpoints/{ve.public_id}", f"/virtual-endpoints/{ve.public_id}/keys",
                 f"/virtual-endpoints/{ve.public_id}/keys/{key.pk}", f"/virtual-endpoints/{ve.public_id}/grants"):
        assert api.get(path).status_code == 404, path
    assert api.post(f"/virtual-endpoints/{ve.public_id}/keys", {"name": "k"}).status_code == 404
    assert api.post(f"/virtual-endpoints/{ve.public_id}/grants", {"credits": "5"}).status_code == 404
    assert api.patch(f"/virtual-endpoints/{ve.public_id}", {"name": "mine"}).status_code == 404
    assert LedgerEntry.objects.filter(virtual_endpoint=ve).count() == 1
    assert AccessKey.objects.filter(virtual_endpoint=ve).count() == 1


def test_key_is_shown_once_and_stored_hashed(api, org):
    # given
    factories.make_logical_model(org, "chat")
    ve = factories.make_ve(org)
    # when
    created = api.post(f"/virtual-endpoints/{ve.public_id}/keys",
                       {"name": "app", "credit_limit": "100", "allowed_models": ["chat"]})
    # then
    assert created.status_code == 201, created.content
    body = created.json()
    secret = body["key"]
    assert secret.startswith("tb-") and body["prefix"] == secret[:10]
    assert body["credit_limit"] == "100" and body["allowed_models"] == ["chat"]
    key = AccessKey.objects.get(pk=body["id"])
    assert key.key_hash == hash_secret(secret) and key.credit_limit == 100_000_000
    listing = api.get(f"/virtual-endpoints/{ve.public_id}/keys")
    one = api.get(f"/virtual-endpoints/{ve.public_id}/keys/{key.pk}")
    for response in (listing, one):
        assert response.status_code == 200
        assert secret not in response.content.decode() and "key_hash" not in response.content.decode()
    assert "key" not in one.json()


def test_key_update_revoke_delete(api, org):
    # given
    ve = factories.make_ve(org)
    key, _ = factories.make_key(ve)
    base = f"/virtual-endpoints/{ve.public_id}/keys/{key.pk}"
    # when / then
    assert api.patch(base, {"name": "renamed", "expires_at": "2030-01-01T00:00:00Z"}).json()["name"] == "renamed"
    assert api.post(f"{base}/revoke").json()["enabled"] is False
    key.refresh_from_db()
    assert not key.enabled and key.expires_at.year == 2030
    assert api.delete(base).status_code == 204
    assert not AccessKey.objects.filter(pk=key.pk).exists()


def test_key_of_another_endpoint_is_404(api, org):
    ve1, ve2 = factories.make_ve(org), factories.make_ve(org)
    key, _ = factories.make_key(ve2)
    assert api.get(f"/virtual-endpoints/{ve1.public_id}/keys/{key.pk}").status_code == 404


def test_key_validation_errors(api, org):
    ve = factories.make_ve(org)
    path = f"/virtual-endpoints/{ve.public_id}/keys"
    assert api.post(path, {}).status_code == 422
    assert api.post(path, {"name": "k", "credit_limit": "-1"}).status_code == 422
    assert api.post(path, {"name": "k", "allowed_models": ["nope"]}).status_code == 400
    assert api.post(path, {"name": "k", "credit_limit": "0.0000001"}).status_code == 422
