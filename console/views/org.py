"""Organization pages: exchange rates (history kept), settings (markup), members and invitations."""

from __future__ import annotations

import httpx
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.models import ExchangeRate
from console.access import console_view, org_get
from console.forms import ExchangeRateForm, InvitationForm, MemberRoleForm, OrganizationSettingsForm
from console.models import Invitation
from console.selectors import current_rates
from billing.rates import rate_set
from console.views.common import apply_service, done, render_page
from routing.models import Membership, Role
from routing.services import config_changed


@console_view(read=Role.VIEWER, write=Role.ADMIN)
def rates(request):
    form = ExchangeRateForm(request.POST or None)
    rate = None
    if request.method == "POST" and form.is_valid():
        rate = apply_service(form, lambda **kw: rate_set(request.org, **kw), created_by=request.user, **form.cleaned_data)
    if rate is not None:
        return done(request, reverse("console:rates"), f"1 {rate.currency} = {rate.credits_per_unit.normalize():f} credits saved.")
    history = ExchangeRate.objects.filter(Q(organization=request.org) | Q(organization__isnull=True)).select_related("created_by")[:200]
    context = {"form": form, "history": history, "current": sorted(current_rates(request.org).items())}
    status = 422 if form.is_bound and form.errors else 200
    return render_page(request, "console/rates.html", context, status=status)


@console_view(read=Role.VIEWER, write=Role.OWNER)
def org_settings(request):
    form = OrganizationSettingsForm(request.POST or None, instance=request.org)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            config_changed()  # markup is part of every price the gateway computes
        return done(request, reverse("console:org_settings"), "Settings saved.")
    status = 422 if form.is_bound and form.errors else 200
    # Only those who may edit the settings see the whole URL (in the form): its path or query
    # may carry the receiver's secret token. Everyone else sees where alerts go, not how.
    context = {"form": form, "alert_webhook_masked": _masked_url(request.org.alert_webhook_url)}
    return render_page(request, "console/org_settings.html", context, status=status)


def _masked_url(url: str) -> str:
    """Scheme, host and port of `url` ("https://hooks.example.com/…"), none of the parts that
    may hold a credential (user, password, path, query); "set" if it cannot be parsed, empty
    for no URL."""
    if not url:
        return ""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "set"
    if not parsed.host:
        return "set"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}/…"


@console_view(read=Role.VIEWER, write=Role.OWNER)
def members(request):
    form = InvitationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        invitation = form.save(commit=False)
        invitation.organization = request.org
        invitation.invited_by = request.user
        invitation.save()
        _send_invitation(request, invitation)
        return done(request, reverse("console:members"), f"Invitation sent to {invitation.email}.")
    context = {
        "form": form, "role_form": MemberRoleForm(),
        "members": Membership.objects.filter(organization=request.org).select_related("user").order_by("user__email"),
        "invitations": Invitation.objects.filter(organization=request.org, accepted_at__isnull=True),
    }
    status = 422 if form.is_bound and form.errors else 200
    return render_page(request, "console/members.html", context, status=status)


def _send_invitation(request, invitation: Invitation) -> None:
    from django.core.mail import send_mail

    link = request.build_absolute_uri(reverse("console:accept_invitation", args=[invitation.token]))
    send_mail(
        f"Join {invitation.organization.name} on TokenBill",
        f"{request.user.email or request.user.username} invited you to {invitation.organization.name} "
        f"as {invitation.get_role_display()}.\n\nAccept: {link}\n\nThe link works for 7 days.",
        None, [invitation.email],
    )


@console_view(read=Role.OWNER, write=Role.OWNER)
@require_POST
def member_role(request, pk: int):
    membership = org_get(Membership.objects.select_related("user"), request=request, pk=pk)
    form = MemberRoleForm(request.POST)
    if form.is_valid():
        if _is_last_owner(membership, new_role=form.cleaned_data["role"]):
            messages.error(request, LAST_OWNER)
            return done(request, reverse("console:members"))
        membership.role = form.cleaned_data["role"]
        membership.save(update_fields=["role"])
        messages.success(request, f"{membership.user.email or membership.user.username} is now {membership.get_role_display()}.")
    return done(request, reverse("console:members"))


@console_view(read=Role.OWNER, write=Role.OWNER)
@require_POST
def member_remove(request, pk: int):
    membership = org_get(Membership.objects.select_related("user"), request=request, pk=pk)
    if _is_last_owner(membership, new_role=None):
        messages.error(request, LAST_OWNER)
        return done(request, reverse("console:members"))
    membership.delete()
    return done(request, reverse("console:members"), "Member removed.")


LAST_OWNER = ("Not changed: an organization needs at least one owner. Make another member Owner first, "
              "then change or remove this one.")


def _is_last_owner(membership: Membership, new_role) -> bool:
    try:
        _guard_last_owner(membership, new_role)
    except PermissionDenied:
        return True
    return False


def _guard_last_owner(membership: Membership, new_role) -> None:
    """An organization always keeps at least one owner."""
    if membership.role == Role.OWNER and new_role != Role.OWNER:
        owners = Membership.objects.filter(organization_id=membership.organization_id, role=Role.OWNER).count()
        if owners <= 1:
            raise PermissionDenied("An organization needs at least one owner.")


@console_view(read=Role.OWNER, write=Role.OWNER)
@require_POST
def invitation_revoke(request, pk: int):
    invitation = org_get(Invitation.objects, request=request, pk=pk)
    invitation.delete()
    return done(request, reverse("console:members"), "Invitation revoked.")
