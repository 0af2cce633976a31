"""The logical model's unsupported-parameter policy through the management API."""

from routing.models import LogicalModel


def test_policy_defaults_to_drop_and_can_be_set_to_reject(api, org):
    created = api.post("/logical-models", {"name": "strict"})
    assert created.status_code == 201, created.content
    assert created.json()["unsupported_params"] == "drop"
    patched = api.patch(f"/logical-models/{created.json()['id']}", {"unsupported_params": "reject"})
    assert patched.status_code == 200 and patched.json()["unsupported_params"] == "reject"
    assert LogicalModel.objects.get(pk=created.json()["id"]).unsupported_params == "reject"


def test_an_unknown_policy_is_a_validation_error(api, org):
    response = api.post("/logical-models", {"name": "odd", "unsupported_params": "ignore"})
    assert response.status_code in (400, 422)
    assert not LogicalModel.objects.filter(name="odd").exists()
