"""Who is looking, in which organization, with which role.

Every console view is wrapped by `console_view(read=..., write=...)`: it resolves the
signed-in user's current organization (kept in the session, switchable), attaches
`request.org` and `request.membership`, and refuses a role that is too low with 403.
Safe methods (GET/HEAD) need the `read` role, everything else the `write` role, so a
viewer can open the providers page but cannot POST to it.

Objects are always fetched through `org_get(...)`, which filters by the current
organization: another organization's id is a 404, never a 403 (no existence leak).
"""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.http import HttpResponse

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, render, resolve_url

from routing.models import Membership, Role

SESSION_ORG_KEY = "console_org_id"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def current_membership(request) -> Membership | None:
    memberships = list(
        Membership.objects.filter(user=request.user).select_related("organization").order_by("organization__name")
    )
    request.memberships = memberships
    if not memberships:
        return None
    wanted = request.session.get(SESSION_ORG_KEY)
    for membership in memberships:
        if membership.organization_id == wanted:
            return membership
    request.session[SESSION_ORG_KEY] = memberships[0].organization_id
    return memberships[0]


def login_redirect(request):
    """To the sign-in page, coming back afterwards. An htmx request (a modal, a search, an
    inline edit) gets HX-Redirect: a plain 302 would be followed by the XHR and the login
    page swapped into the modal, its form posting to the wrong URL. `next` is then the page
    the user was on (HX-Current-URL, same host only), not the partial's URL."""
    if not request.htmx:
        return redirect_to_login(request.get_full_path())
    back = request.get_full_path() if request.method in SAFE_METHODS else ""
    current = urlsplit(request.headers.get("HX-Current-URL", ""))
    if current.path and (not current.netloc or current.netloc == request.get_host()):
        back = current.path + (f"?{current.query}" if current.query else "")
    target = resolve_url(settings.LOGIN_URL) + (f"?{urlencode({'next': back})}" if back else "")
    response = HttpResponse(status=401)
    response["HX-Redirect"] = target
    return response


def console_view(read: str = Role.VIEWER, write: str | None = None):
    """Decorator: signed in, member of an organization, and role high enough for the method."""
    write = write or read

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return login_redirect(request)
            membership = current_membership(request)
            if membership is None:
                return render(request, "console/no_org.html", status=403)
            needed = read if request.method in SAFE_METHODS else write
            if not membership.can(needed):
                raise PermissionDenied(f"This needs the {Role(needed).label} role.")
            request.membership = membership
            request.org = membership.organization
            return view(request, *args, **kwargs)

        wrapper.console_roles = (read, write)
        return wrapper

    return decorator


def org_get(queryset, org_path: str = "organization", **lookup):
    """get_object_or_404 limited to objects of the request's organization.

    Usage: org_get(Provider.objects, request=request, pk=pk). org_path names the lookup
    from the model to Organization (e.g. "provider__organization")."""
    request = lookup.pop("request")
    return get_object_or_404(queryset, **{org_path: request.org}, **lookup)
