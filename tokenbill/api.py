"""The management API: one NinjaAPI, each app contributes a router."""

from ninja import NinjaAPI

api = NinjaAPI(
    title="TokenBill management API",
    version="1",
    urls_namespace="api",
    docs_url="/docs",
)
