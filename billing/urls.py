"""End-user facing billing pages (checkout, public model pricing, the customer portal) and the Stripe webhook."""

from django.urls import path

from billing import checkout_views, portal, pricing_public, webhooks

app_name = "billing"

urlpatterns: list = [
    path("checkout", checkout_views.checkout_page, name="checkout"),
    path("checkout/preview", checkout_views.checkout_preview, name="checkout_preview"),
    path("checkout/pay", checkout_views.checkout_pay, name="checkout_pay"),
    path("checkout/test", checkout_views.checkout_test_pay, name="checkout_test_pay"),
    path("checkout/success", checkout_views.checkout_success, name="checkout_success"),
    path("checkout/success/status", checkout_views.checkout_success_status, name="checkout_success_status"),
    path("checkout/cancel", checkout_views.checkout_cancel, name="checkout_cancel"),
    path("pricing/<slug:slug>", pricing_public.pricing_page, name="pricing"),
    path("portal/", portal.portal_start, name="portal"),
    path("portal/login/<str:token>/", portal.portal_login, name="portal_login"),
    path("portal/logout/", portal.portal_logout, name="portal_logout"),
    path("portal/<str:ve_public_id>/", portal.portal_endpoint, name="portal_endpoint"),
    path("portal/<str:ve_public_id>/receipts/<int:payment_id>/", portal.portal_receipt, name="portal_receipt"),
    path("portal/<str:ve_public_id>/keys/new/", portal.portal_key_new, name="portal_key_new"),
    path("portal/<str:ve_public_id>/keys/<int:key_id>/toggle/", portal.portal_key_toggle, name="portal_key_toggle"),
    path("stripe/webhook/", webhooks.stripe_webhook, name="stripe_webhook"),
]
