"""Out-of-range input is a 4xx, never a database overflow (500)."""

import pytest

from tests import factories

HUGE = 99999999999999999999999


@pytest.mark.parametrize("path", [f"/providers/{HUGE}", f"/physical-models/{HUGE}", f"/logical-models/{HUGE}",
                                  f"/physical-models?provider_id={HUGE}", "/virtual-endpoints/" + "x" * 3000])
def test_huge_ids_in_paths_are_4xx(api, path):
    assert api.get(path).status_code in (404, 422)


def test_huge_numbers_in_bodies_are_4xx(api, org):
    ve = factories.make_ve(org)
    assert api.post("/logical-models", {"name": "m", "routes": [{"physical_model_id": HUGE}]}).status_code == 422
    assert api.post("/physical-models", {"provider_id": HUGE, "upstream_model": "x"}).status_code == 422
    assert api.post("/virtual-endpoints", {"name": "e", "requests_per_minute": HUGE}).status_code == 422
    assert api.post("/virtual-endpoints", {"name": "e", "low_balance_threshold": str(HUGE)}).status_code == 422
    assert api.post(f"/virtual-endpoints/{ve.public_id}/grants", {"credits": str(HUGE)}).status_code == 422
    assert api.post(f"/virtual-endpoints/{ve.public_id}/keys", {"name": "k", "credit_limit": str(HUGE)}).status_code == 422
    assert api.get(f"/virtual-endpoints/{ve.public_id}/keys/{HUGE}").status_code in (404, 422)


def test_malformed_json_is_4xx(api):
    response = api.client.post("/api/v1/providers", data="{not json", content_type="application/json",
                               **api.headers)
    assert 400 <= response.status_code < 500
