"""Sign in/out, password reset (Django's views with our templates), organization switch,
invitation acceptance."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_POST

from console.access import SESSION_ORG_KEY
from console.models import Invitation
from routing.models import Membership

AUTH_TEMPLATE = "console/auth_form.html"

login = auth_views.LoginView.as_view(template_name="console/login.html", redirect_authenticated_user=True)
logout = auth_views.LogoutView.as_view()
password_reset = auth_views.PasswordResetView.as_view(
    template_name=AUTH_TEMPLATE, email_template_name="console/email/password_reset.txt",
    success_url=reverse_lazy("console:password_reset_done"),
    extra_context={"title": "Reset your password", "submit": "Send reset link",
                   "intro": "We will email you a link to choose a new password."},
)
password_reset_done = auth_views.PasswordResetDoneView.as_view(
    template_name=AUTH_TEMPLATE,
    extra_context={"title": "Check your email", "intro": "If an account uses that address, a reset link is on its way."},
)
password_reset_confirm = auth_views.PasswordResetConfirmView.as_view(
    template_name=AUTH_TEMPLATE, success_url=reverse_lazy("console:password_reset_complete"),
    extra_context={"title": "Choose a new password", "submit": "Set password"},
)
password_reset_complete = auth_views.PasswordResetCompleteView.as_view(
    template_name=AUTH_TEMPLATE, extra_context={"title": "Password changed", "intro": "You can sign in now."},
)


@login_required
@require_POST
def switch_org(request):
    try:
        org_id = int(request.POST.get("organization", ""))
    except ValueError:
        raise Http404 from None
    if not Membership.objects.filter(user=request.user, organization_id=org_id).exists():
        raise Http404("Not a member of that organization")
    request.session[SESSION_ORG_KEY] = org_id
    return redirect("console:home")


def accept_invitation(request, token: str):
    """Signed in: one click joins. Not signed in: sign in first, or create an account for
    the invited address right here (the emailed link proves the address)."""
    invitation = get_object_or_404(Invitation.objects.select_related("organization"), token=token)
    signup = None
    if not request.user.is_authenticated and invitation.is_open:
        signup = _signup_form(request, invitation)
        if request.method == "POST" and signup.is_valid():
            user = signup.save()
            auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    if request.method == "POST" and invitation.is_open and request.user.is_authenticated:
        _accept(invitation, request.user)
        request.session[SESSION_ORG_KEY] = invitation.organization_id
        messages.success(request, f"Welcome to {invitation.organization.name}.")
        return redirect(reverse("console:home"))
    return render(request, "console/invitation.html", {"invitation": invitation, "signup": signup})


def _signup_form(request, invitation: Invitation):
    User = get_user_model()
    user = User(username=invitation.email, email=invitation.email)
    form = SetPasswordForm(user, request.POST or None)
    if User.objects.filter(username__iexact=invitation.email).exists():
        return None  # an account exists: sign in instead
    return form


def _accept(invitation: Invitation, user) -> None:
    # Row lock: two clicks on the same link make one membership, and a used link stays used.
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if not locked.is_open:
            return
        try:
            with transaction.atomic():
                Membership.objects.create(user=user, organization_id=locked.organization_id, role=locked.role)
        except IntegrityError:
            pass  # already a member: keep the existing role
        locked.accepted_at = timezone.now()
        locked.accepted_by = user
        locked.save(update_fields=["accepted_at", "accepted_by"])
