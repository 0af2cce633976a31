"""Roles on every page and partial, and other organizations' ids answering 404.

Convention: a role too low for a page or action gets 403 (the object exists in *your*
organization, so there is nothing to hide); another organization's object id gets 404
whatever your role (its existence is not revealed)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from routing.models import ROLE_RANK, Role

VIEWER, DEVELOPER, ADMIN, OWNER = Role.VIEWER, Role.DEVELOPER, Role.ADMIN, Role.OWNER

# (url name, object the pk comes from or None, minimum role for GET, minimum role for POST or None)
PAGES = [
    ("home", None, VIEWER, None),
    ("providers", None, VIEWER, None),
    ("provider_new", None, ADMIN, ADMIN),
    ("provider_edit", "provider", ADMIN, ADMIN),
    ("provider_toggle", "provider", None, ADMIN),
    ("models", None, VIEWER, None),
    ("physical_new", None, ADMIN, ADMIN),
    ("physical_edit", "pm1", ADMIN, ADMIN),
    ("logical_new", None, ADMIN, ADMIN),
    ("logical_detail", "lm", VIEWER, None),
    ("logical_edit", "lm", ADMIN, ADMIN),
    ("route_add", "lm", None, ADMIN),
    ("route_edit", "route", None, ADMIN),
    ("route_delete", "route", None, ADMIN),
    ("endpoints", None, VIEWER, None),
    ("endpoint_new", None, DEVELOPER, DEVELOPER),
    ("endpoint_detail", "ve", VIEWER, None),
    ("endpoint_edit", "ve", DEVELOPER, DEVELOPER),
    ("endpoint_grant", "ve", DEVELOPER, DEVELOPER),
    ("key_new", "ve", DEVELOPER, DEVELOPER),
    ("key_edit", "key", DEVELOPER, DEVELOPER),
    ("key_toggle", "key", None, DEVELOPER),
    ("key_delete", "key", None, DEVELOPER),
    ("ledger", "ve", VIEWER, None),
    ("ledger_export", "ve", VIEWER, None),
    ("requests", None, VIEWER, None),
    ("requests_export", None, VIEWER, None),
    ("rates", None, VIEWER, ADMIN),
    ("org_settings", None, VIEWER, OWNER),
    ("members", None, VIEWER, OWNER),
    ("playground", None, DEVELOPER, None),
]


def _url(name, obj_name, objects):
    if obj_name is None:
        return reverse(f"console:{name}")
    return reverse(f"console:{name}", args=[objects[obj_name].pk])


def _cases(method_index):
    for name, obj, get_role, post_role in PAGES:
        needed = (get_role, post_role)[method_index]
        if needed is None:
            continue
        for role in Role.values:
            yield pytest.param(name, obj, needed, role, id=f"{name}-{role}")


@pytest.mark.parametrize("name,obj,needed,role", list(_cases(0)))
def test_get_needs_role(as_role, world, name, obj, needed, role):
    # given a member with `role`
    client = as_role(role)
    # when they open the page (full page and htmx partial)
    full = client.get(_url(name, obj, world["mine"]))
    partial = client.get(_url(name, obj, world["mine"]), HTTP_HX_REQUEST="true")
    # then it answers when the role is high enough, 403 otherwise
    expected = 200 if ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)] else 403
    assert full.status_code == expected
    assert partial.status_code == expected


@pytest.mark.parametrize("name,obj,needed,role", [c for c in _cases(1) if ROLE_RANK[Role(c.values[3])] < ROLE_RANK[Role(c.values[2])]])
def test_post_below_role_is_forbidden_and_changes_nothing(as_role, world, name, obj, needed, role):
    from routing.models import ConfigVersion

    client = as_role(role)
    before = ConfigVersion.objects.values_list("version", flat=True).first()
    response = client.post(_url(name, obj, world["mine"]), {"name": "x", "credits": "5", "priority": 1, "weight": 1})
    assert response.status_code == 403
    assert ConfigVersion.objects.values_list("version", flat=True).first() == before


@pytest.mark.parametrize("name,obj", sorted({(n, o) for n, o, _, _ in PAGES if o}))
def test_other_organizations_objects_are_404(owner_client, world, name, obj):
    # given an owner of `org`, and an object of another organization
    url = _url(name, obj, world["theirs"])
    # when they GET or POST it
    # then it does not exist for them
    assert owner_client.get(url).status_code in (404, 405)
    assert owner_client.post(url, {"priority": 1, "weight": 1, "credits": "5"}).status_code == 404


def test_request_detail_of_other_org_is_404(owner_client, world):
    from tests.console.test_queries import make_logs

    theirs = make_logs(world["theirs"], 1)[0]
    assert owner_client.get(reverse("console:request_detail", args=[theirs.pk])).status_code == 404


def test_anonymous_is_sent_to_sign_in(client, world):
    response = client.get(reverse("console:endpoints"))
    assert response.status_code == 302
    assert response["Location"].startswith("/console/login/?next=")


def test_csrf_is_enforced(members, world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(members[OWNER])
    response = client.post(reverse("console:endpoint_grant", args=[world["mine"]["ve"].pk]), {"credits": "5", "token": "t"})
    assert response.status_code == 403
    assert b"CSRF" in response.content


def test_user_without_membership_sees_explanation(client, db):
    from tests import factories

    client.force_login(factories.make_user())
    response = client.get(reverse("console:home"))
    assert response.status_code == 403
    assert b"not in an organization" in response.content


def test_switch_org_only_to_own_memberships(client, org, other_org):
    from tests import factories

    member = factories.make_member(org, role=VIEWER)
    factories.make_member(other_org, role=OWNER, user=member.user)
    stranger_org = factories.make_org("Initech")
    client.force_login(member.user)
    # when they switch to the second organization, pages show it
    assert client.post(reverse("console:switch_org"), {"organization": other_org.pk}).status_code == 302
    assert b"Globex" in client.get(reverse("console:home")).content
    # and they cannot switch into an organization they are not a member of
    assert client.post(reverse("console:switch_org"), {"organization": stranger_org.pk}).status_code == 404


@pytest.mark.parametrize("name,obj,hidden", [
    ("providers", None, b"+ Add provider"), ("models", None, b"+ Logical model"), ("endpoints", None, b"+ New endpoint"),
    ("endpoint_detail", "ve", b"Grant credits"), ("endpoint_detail", "ve", b"+ New key"), ("logical_detail", "lm", b"Add route"),
    ("members", None, b"Send invitation"), ("org_settings", None, b"Save settings"), ("rates", None, b"Save rate"),
])
def test_viewer_sees_no_write_controls(as_role, world, name, obj, hidden):
    page = as_role(VIEWER).get(_url(name, obj, world["mine"]))
    assert page.status_code == 200 and hidden not in page.content


def test_owner_changes_a_members_role(owner_client, org, members):
    from routing.models import Membership

    dev = Membership.objects.get(organization=org, user=members[DEVELOPER])
    owner_client.post(reverse("console:member_role", args=[dev.pk]), {"role": ADMIN})
    dev.refresh_from_db()
    assert dev.role == ADMIN
    owner_client.post(reverse("console:member_remove", args=[dev.pk]))
    assert not Membership.objects.filter(pk=dev.pk).exists()
