"""The management API: one NinjaAPI, each app contributes a router.

Authentication: `Authorization: Bearer tbm_…`, a ManagementToken of one organization
(stored hashed; create one with `manage.py create_merchant` or in the console). Every
resource is scoped to that organization: another organization's id answers 404.

Errors: 401 without a valid token; 404 for unknown (or foreign) ids; 422 when the body
does not match the schema (ninja's default); 400 `{"detail", "errors": {field: [..]}}` when
a value is refused by the model rules; 409 for a name that already exists or a delete
that would break history. Never a 500 for bad input.
"""

from __future__ import annotations

import importlib.util

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from ninja import NinjaAPI
from ninja.security import HttpBearer

from billing.money import MoneyError


class ManagementTokenAuth(HttpBearer):
    def authenticate(self, request, token: str):
        from routing.selectors import management_token_authenticate

        return management_token_authenticate(token)


api = NinjaAPI(
    title="TokenBill management API",
    version="1",
    urls_namespace="api",
    docs_url="/docs",
    auth=ManagementTokenAuth(),
)

_UNIQUE_CODES = {"unique", "unique_together"}


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {field: [m for e in errors for m in e.messages] for field, errors in exc.error_dict.items()}
    return {"__all__": exc.messages}


def _codes(exc: ValidationError) -> set:
    if hasattr(exc, "error_dict"):
        return {e.code for errors in exc.error_dict.values() for e in errors}
    return {e.code for e in exc.error_list}


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    errors = _errors(exc)
    status = 409 if _codes(exc) & _UNIQUE_CODES else 400
    first = next(iter(errors.items()))
    return api.create_response(request, {"detail": f"{first[0]}: {first[1][0]}", "errors": errors}, status=status)


@api.exception_handler(MoneyError)
def _money_error(request, exc: MoneyError):
    return api.create_response(request, {"detail": str(exc), "errors": {"__all__": [str(exc)]}}, status=400)


@api.exception_handler(IntegrityError)
def _integrity_error(request, exc: IntegrityError):
    # A concurrent write won a uniqueness race that full_clean() had checked a moment before.
    return api.create_response(request, {"detail": "Conflicts with an existing object.", "errors": {}}, status=409)


@api.exception_handler(ProtectedError)
def _protected_error(request, exc: ProtectedError):
    detail = "Cannot delete: ledger entries or payments refer to it (disable or suspend it instead)."
    return api.create_response(request, {"detail": detail, "errors": {}}, status=409)


def _wire_routers() -> None:
    from billing.api import router as billing_router
    from routing.api import router as routing_router

    api.add_router("", routing_router)
    api.add_router("", billing_router)
    # Ledger, request and usage reports (billing/reports_api.py, built alongside).
    if importlib.util.find_spec("billing.reports_api") is not None:
        from billing.reports_api import router as reports_router

        api.add_router("", reports_router)


_wire_routers()
