"""Deleting providers, physical and logical models and Virtual Endpoints from the console:
a confirmation step first, the management API's guards (a VE with ledger history is
refused: suspend it instead), the usual roles, and the gateway told of every delete."""

from __future__ import annotations

import pytest
from django.urls import reverse

from routing.models import ROLE_RANK, ConfigVersion, LogicalModel, PhysicalModel, Provider, Role, Route, VirtualEndpoint
from tests import factories

# url name -> (object of the `world` fixture, its model, the lowest role that may delete it, where success lands)
DELETES = {
    "provider_delete": ("provider", Provider, Role.ADMIN, "console:providers"),
    "physical_delete": ("pm1", PhysicalModel, Role.ADMIN, "console:models"),
    "logical_delete": ("lm", LogicalModel, Role.ADMIN, "console:models"),
    "endpoint_delete": ("ve_fresh", VirtualEndpoint, Role.DEVELOPER, "console:endpoints"),
}
CONFIRM = {"confirm": "yes"}


@pytest.fixture
def objects(world, org, other_org):
    """The `world` objects, plus a VE without ledger history on each side (world's VEs have a grant)."""
    mine, theirs = dict(world["mine"]), dict(world["theirs"])
    mine["ve_fresh"] = factories.make_ve(org, name="fresh")
    theirs["ve_fresh"] = factories.make_ve(other_org, name="their fresh")
    return {"mine": mine, "theirs": theirs}


def version():
    return ConfigVersion.objects.get(pk=1).version


def url(name, obj):
    return reverse(f"console:{name}", args=[obj.pk])


def exists(obj) -> bool:
    return type(obj).objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("name", DELETES)
def test_confirmed_delete_removes_it_and_tells_the_gateway(owner_client, objects, name, django_capture_on_commit_callbacks):
    # given
    obj_name, _, _, landing = DELETES[name]
    obj = objects["mine"][obj_name]
    v0 = version()
    # when the owner confirms the delete (a plain form post, no JS)
    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post(url(name, obj), CONFIRM)
    # then it is gone, the list shows a message, and the routing cache is invalidated
    assert response.status_code == 302 and response["Location"] == reverse(landing)
    assert not exists(obj)
    assert version() > v0 and callbacks  # config_changed(): the cache's listener runs after commit
    assert b"deleted." in owner_client.get(response["Location"]).content


@pytest.mark.parametrize("name", DELETES)
def test_first_post_only_asks_for_confirmation(owner_client, objects, name):
    # given
    obj = objects["mine"][DELETES[name][0]]
    v0 = version()
    # when the Delete button is posted without JS
    response = owner_client.post(url(name, obj))
    # then a confirmation page comes back, and nothing is deleted yet
    assert response.status_code == 200 and b"<html" in response.content
    assert b'name="confirm" value="yes"' in response.content and b"cannot be undone" in response.content
    assert exists(obj) and version() == v0


@pytest.mark.parametrize("name", DELETES)
def test_htmx_confirms_in_a_modal_then_redirects(owner_client, objects, name):
    # given
    obj_name, _, _, landing = DELETES[name]
    obj = objects["mine"][obj_name]
    # when the Delete button is clicked with htmx
    modal = owner_client.post(url(name, obj), HTTP_HX_REQUEST="true")
    # then the confirmation is a modal fragment
    assert modal.status_code == 200 and b"modal-backdrop" in modal.content and b"<html" not in modal.content
    assert exists(obj)
    # and confirming it deletes and sends the browser to the list
    done = owner_client.post(url(name, obj), CONFIRM, HTTP_HX_REQUEST="true")
    assert done.status_code == 204 and done["HX-Redirect"] == reverse(landing)
    assert not exists(obj)


def test_endpoint_with_ledger_history_is_refused_with_suspend_instead(owner_client, objects):
    # given a VE that received a grant (a ledger entry, kept for good)
    ve = objects["mine"]["ve"]
    v0 = version()
    # when the owner asks to delete it (the first step), and confirms, without JS and with htmx
    asked = owner_client.post(url("endpoint_delete", ve))
    page = owner_client.post(url("endpoint_delete", ve), CONFIRM)
    modal = owner_client.post(url("endpoint_delete", ve), CONFIRM, HTTP_HX_REQUEST="true")
    # then it is refused on the page (already at the first step: no Delete button offered),
    # with the way out, and nothing changes
    for response in (asked, page, modal):
        assert response.status_code == 422
        assert b"Not deleted." in response.content and b"Suspend it instead" in response.content
        assert reverse("console:endpoint_edit", args=[ve.pk]).encode() in response.content
        assert b'name="confirm"' not in response.content
    assert b"modal-backdrop" in modal.content and b"<html" in page.content
    ve.refresh_from_db()
    assert ve.status == "active" and ve.keys.count() == 1 and ve.ledger_entries.count() == 1
    assert version() == v0


def test_provider_delete_takes_its_models_and_routes(owner_client, objects):
    # given a provider whose two physical models serve the logical model "chat"
    mine = objects["mine"]
    # when
    owner_client.post(url("provider_delete", mine["provider"]), CONFIRM)
    # then its models and their routes go with it; the logical model stays, without routes
    assert not PhysicalModel.objects.filter(pk__in=[mine["pm1"].pk, mine["pm2"].pk]).exists()
    assert exists(mine["lm"]) and not Route.objects.filter(logical_model=mine["lm"]).exists()
    # and the other organization's configuration is untouched
    assert exists(objects["theirs"]["provider"]) and exists(objects["theirs"]["pm1"])


def test_physical_model_confirmation_names_the_routes_it_leaves(owner_client, objects):
    # given pm1 routed by "chat"
    mine = objects["mine"]
    # when the confirmation opens
    response = owner_client.post(url("physical_delete", mine["pm1"]))
    # then it says which logical model loses a route; confirming keeps the other route
    assert b"removed from the routes of: chat" in response.content
    owner_client.post(url("physical_delete", mine["pm1"]), CONFIRM)
    assert list(mine["lm"].routes.values_list("physical_model_id", flat=True)) == [mine["pm2"].pk]


def test_logical_model_delete_removes_it_from_endpoints(owner_client, objects):
    # given "chat", allowed on the VE
    mine = objects["mine"]
    # when
    owner_client.post(url("logical_delete", mine["lm"]), CONFIRM)
    # then the VE no longer allows it, and the VE itself stays
    assert exists(mine["ve"]) and not mine["ve"].allowed_models.exists()


TOO_LOW = [(name, role) for name, (_, _, needed, _) in DELETES.items() for role in Role.values
           if ROLE_RANK[Role(role)] < ROLE_RANK[needed]]


@pytest.mark.parametrize("name,role", TOO_LOW)
def test_role_too_low_is_forbidden_and_deletes_nothing(as_role, objects, name, role):
    # given a member whose role is below what the page's other writes need (viewer: every delete)
    obj = objects["mine"][DELETES[name][0]]
    v0 = version()
    # when they post the delete, confirmed
    response = as_role(role).post(url(name, obj), CONFIRM)
    # then 403, and it is still there
    assert response.status_code == 403
    assert exists(obj) and version() == v0


def test_developer_may_delete_an_endpoint(as_role, objects):
    ve = objects["mine"]["ve_fresh"]
    response = as_role(Role.DEVELOPER).post(url("endpoint_delete", ve), CONFIRM)
    assert response.status_code == 302 and not exists(ve)


@pytest.mark.parametrize("name", DELETES)
def test_other_organizations_object_is_404_and_stays(owner_client, objects, name):
    # given an owner of `org`, and an object of another organization
    theirs = objects["theirs"][DELETES[name][0]]
    # when they post its delete, with and without confirmation
    # then it does not exist for them, and it is still there
    assert owner_client.post(url(name, theirs)).status_code == 404
    assert owner_client.post(url(name, theirs), CONFIRM).status_code == 404
    assert exists(theirs)


@pytest.mark.parametrize("name", DELETES)
def test_get_is_not_allowed(owner_client, objects, name):
    obj = objects["mine"][DELETES[name][0]]
    assert owner_client.get(url(name, obj)).status_code == 405
    assert owner_client.get(url(name, obj), {"confirm": "yes"}).status_code == 405
    assert exists(obj)


@pytest.mark.parametrize("page,obj_name,delete,modal", [
    ("provider_edit", "provider", "provider_delete", True),
    ("physical_edit", "pm1", "physical_delete", True),
    ("logical_detail", "lm", "logical_delete", False),
    ("endpoint_detail", "ve", "endpoint_delete", False),
])
def test_edit_and_detail_pages_offer_delete(owner_client, objects, page, obj_name, delete, modal):
    # given the page of an object, as a page and (edit forms) as the htmx modal
    obj = objects["mine"][obj_name]
    responses = [owner_client.get(url(page, obj))]
    if modal:
        responses.append(owner_client.get(url(page, obj), HTTP_HX_REQUEST="true"))
    # then each has a Delete button posting to the delete view
    for response in responses:
        assert response.status_code == 200
        assert b'action="' + url(delete, obj).encode() + b'"' in response.content
        assert "Delete…".encode() in response.content


@pytest.mark.parametrize("page,obj_name", [("logical_detail", "lm"), ("endpoint_detail", "ve")])
def test_viewer_sees_no_delete_button(as_role, objects, page, obj_name):
    response = as_role(Role.VIEWER).get(url(page, objects["mine"][obj_name]))
    assert response.status_code == 200 and b"data-delete-trigger" not in response.content
