from decimal import Decimal

from routing.models import LogicalModel, PhysicalModel, Route
from tests import factories


def _physical(api, provider_id, name="gpt-4o-mini", **kw):
    body = {"provider_id": provider_id, "upstream_model": name, "modality": "chat",
            "input_cost_per_mtok": "0.15", "output_cost_per_mtok": "0.6", **kw}
    response = api.post("/physical-models", body)
    assert response.status_code == 201, response.content
    return response.json()


def test_physical_model_crud_with_decimal_string_prices(api, org):
    # given
    provider = factories.make_provider(org)
    # when
    created = _physical(api, provider.pk)
    # then
    assert created["input_cost_per_mtok"] == "0.15" and created["output_cost_per_mtok"] == "0.6"
    assert PhysicalModel.objects.get(pk=created["id"]).input_cost_per_mtok == Decimal("0.15")
    assert [m["id"] for m in api.get(f"/physical-models?provider_id={provider.pk}").json()] == [created["id"]]
    updated = api.patch(f"/physical-models/{created['id']}", {"output_cost_per_mtok": "1.25"})
    assert updated.json()["output_cost_per_mtok"] == "1.25"
    assert api.delete(f"/physical-models/{created['id']}").status_code == 204
    assert not PhysicalModel.objects.filter(pk=created["id"]).exists()


def test_physical_model_on_foreign_provider_is_refused(api, other_org):
    foreign = factories.make_provider(other_org)
    response = api.post("/physical-models", {"provider_id": foreign.pk, "upstream_model": "x"})
    assert response.status_code == 400
    assert "provider_id" in response.json()["errors"]


def test_negative_price_is_a_validation_error(api, org):
    provider = factories.make_provider(org)
    response = api.post("/physical-models", {"provider_id": provider.pk, "upstream_model": "x",
                                             "input_cost_per_mtok": "-1"})
    assert response.status_code == 422


def test_logical_model_with_routes(api, org):
    # given
    provider = factories.make_provider(org)
    primary, fallback = _physical(api, provider.pk, "a"), _physical(api, provider.pk, "b")
    # when
    response = api.post("/logical-models", {
        "name": "smart", "output_price_per_mtok": "2.5",
        "routes": [{"physical_model_id": primary["id"], "priority": 0, "weight": "3"},
                   {"physical_model_id": fallback["id"], "priority": 1}],
    })
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["output_price_per_mtok"] == "2.5" and body["input_price_per_mtok"] is None
    assert body["routes"] == [
        {"physical_model_id": primary["id"], "priority": 0, "weight": "3", "enabled": True},
        {"physical_model_id": fallback["id"], "priority": 1, "weight": "1", "enabled": True},
    ]


def test_logical_model_patch_replaces_routes(api, org):
    # given
    provider = factories.make_provider(org)
    a, b = _physical(api, provider.pk, "a"), _physical(api, provider.pk, "b")
    lm = api.post("/logical-models", {"name": "m", "routes": [{"physical_model_id": a["id"]}]}).json()
    # when
    response = api.patch(f"/logical-models/{lm['id']}", {"routes": [{"physical_model_id": b["id"], "weight": "0"}]})
    # then
    assert response.status_code == 200
    assert [(r["physical_model_id"], r["weight"]) for r in response.json()["routes"]] == [(b["id"], "0")]
    assert Route.objects.filter(logical_model_id=lm["id"]).count() == 1
    # and a patch without routes keeps them
    api.patch(f"/logical-models/{lm['id']}", {"description": "kept"})
    assert Route.objects.filter(logical_model_id=lm["id"], physical_model_id=b["id"]).exists()


def test_routes_to_foreign_or_wrong_modality_models_are_refused(api, org, other_org):
    # given
    foreign = factories.make_physical_model(factories.make_provider(other_org))
    embedding = _physical(api, factories.make_provider(org).pk, "emb", modality="embedding")
    # when
    foreign_route = api.post("/logical-models", {"name": "m1", "routes": [{"physical_model_id": foreign.pk}]})
    wrong_modality = api.post("/logical-models", {"name": "m2", "routes": [{"physical_model_id": embedding["id"]}]})
    negative_weight = api.post("/logical-models", {"name": "m3", "routes": [{"physical_model_id": embedding["id"],
                                                                             "weight": "-1"}]})
    # then
    assert foreign_route.status_code == 400 and "routes" in foreign_route.json()["errors"]
    assert wrong_modality.status_code == 400 and "routes" in wrong_modality.json()["errors"]
    assert negative_weight.status_code == 422
    assert not LogicalModel.objects.filter(organization=org).exists()


def test_duplicate_logical_model_name_conflicts_and_bad_name_is_400(api):
    assert api.post("/logical-models", {"name": "dup"}).status_code == 201
    assert api.post("/logical-models", {"name": "dup"}).status_code == 409
    bad = api.post("/logical-models", {"name": "has space"})
    assert bad.status_code == 400 and "name" in bad.json()["errors"]


def test_foreign_logical_and_physical_models_are_404(api, other_org):
    provider = factories.make_provider(other_org)
    pm = factories.make_physical_model(provider)
    lm = factories.make_logical_model(other_org, routes=[pm])
    assert api.get(f"/physical-models/{pm.pk}").status_code == 404
    assert api.get(f"/logical-models/{lm.pk}").status_code == 404
    assert api.patch(f"/logical-models/{lm.pk}", {"description": "x"}).status_code == 404
    assert api.delete(f"/logical-models/{lm.pk}").status_code == 404
    assert api.get("/logical-models").json() == [] and api.get("/physical-models").json() == []


def test_output_limit_fields_of_a_physical_model(api, org):
    # given: by default both follow the upstream name (empty / null)
    provider = factories.make_provider(org)
    created = _physical(api, provider.pk, "prod-deployment")
    assert (created["output_limit_parameter"], created["max_output_tokens"]) == ("", None)
    # when: the merchant says how this deployment takes a limit, and its cap
    updated = api.patch(f"/physical-models/{created['id']}",
                        {"output_limit_parameter": "max_completion_tokens", "max_output_tokens": 100_000})
    # then
    assert updated.status_code == 200, updated.content
    assert (updated.json()["output_limit_parameter"], updated.json()["max_output_tokens"]) == (
        "max_completion_tokens", 100_000)
    pm = PhysicalModel.objects.get(pk=created["id"])
    assert (pm.output_limit_parameter, pm.max_output_tokens) == ("max_completion_tokens", 100_000)
    # and nonsense is refused
    assert api.patch(f"/physical-models/{created['id']}", {"output_limit_parameter": "maxTokens"}).status_code == 422
    assert api.patch(f"/physical-models/{created['id']}", {"max_output_tokens": 0}).status_code == 422


def test_timeout_fields_of_providers_and_logical_models(api, org):
    provider = api.post("/providers", {"name": "slow thinker", "kind": "openai",
                                       "base_url": "https://api.openai.com/v1", "first_byte_timeout": 900})
    assert provider.status_code == 201, provider.content
    assert (provider.json()["first_byte_timeout"], provider.json()["read_timeout"]) == (900, 120)
    model = api.post("/logical-models", {"name": "patient", "fallback_on_timeout": True})
    assert model.status_code == 201, model.content
    assert model.json()["fallback_on_timeout"] is True
    assert LogicalModel.objects.get(pk=model.json()["id"]).fallback_on_timeout
