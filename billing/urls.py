"""End-user facing billing pages (checkout) and the Stripe webhook."""

app_name = "billing"

urlpatterns: list = []
