from django.urls import path

from console.views import auth, dashboard, endpoints, logs, models, org, playground, providers, runs

app_name = "console"

urlpatterns = [
    path("", dashboard.home, name="home"),
    # auth
    path("login/", auth.login, name="login"),
    path("logout/", auth.logout, name="logout"),
    path("password-reset/", auth.password_reset, name="password_reset"),
    path("password-reset/sent/", auth.password_reset_done, name="password_reset_done"),
    path("password-reset/<uidb64>/<token>/", auth.password_reset_confirm, name="password_reset_confirm"),
    path("password-reset/done/", auth.password_reset_complete, name="password_reset_complete"),
    path("switch-org/", auth.switch_org, name="switch_org"),
    path("invitations/<str:token>/", auth.accept_invitation, name="accept_invitation"),
    # providers
    path("providers/", providers.provider_list, name="providers"),
    path("providers/new/", providers.provider_new, name="provider_new"),
    path("providers/<int:pk>/", providers.provider_edit, name="provider_edit"),
    path("providers/<int:pk>/toggle/", providers.provider_toggle, name="provider_toggle"),
    path("providers/<int:pk>/test/", providers.provider_test, name="provider_test"),
    path("providers/<int:pk>/delete/", providers.provider_delete, name="provider_delete"),
    # models and routes
    path("models/", models.model_list, name="models"),
    path("models/physical/new/", models.physical_new, name="physical_new"),
    path("models/physical/<int:pk>/", models.physical_edit, name="physical_edit"),
    path("models/physical/<int:pk>/delete/", models.physical_delete, name="physical_delete"),
    path("models/logical/new/", models.logical_new, name="logical_new"),
    path("models/logical/<int:pk>/", models.logical_detail, name="logical_detail"),
    path("models/logical/<int:pk>/edit/", models.logical_edit, name="logical_edit"),
    path("models/logical/<int:pk>/delete/", models.logical_delete, name="logical_delete"),
    path("models/logical/<int:pk>/routes/", models.route_add, name="route_add"),
    path("routes/<int:pk>/", models.route_edit, name="route_edit"),
    path("routes/<int:pk>/delete/", models.route_delete, name="route_delete"),
    # virtual endpoints and keys
    path("endpoints/", endpoints.endpoint_list, name="endpoints"),
    path("endpoints/new/", endpoints.endpoint_new, name="endpoint_new"),
    path("endpoints/<int:pk>/", endpoints.endpoint_detail, name="endpoint_detail"),
    path("endpoints/<int:pk>/edit/", endpoints.endpoint_edit, name="endpoint_edit"),
    path("endpoints/<int:pk>/delete/", endpoints.endpoint_delete, name="endpoint_delete"),
    path("endpoints/<int:pk>/grant/", endpoints.endpoint_grant, name="endpoint_grant"),
    path("endpoints/<int:pk>/keys/new/", endpoints.key_new, name="key_new"),
    path("endpoints/<int:pk>/ledger/", logs.ledger, name="ledger"),
    path("endpoints/<int:pk>/ledger.csv", logs.ledger_export, name="ledger_export"),
    path("keys/<int:key_pk>/", endpoints.key_edit, name="key_edit"),
    path("keys/<int:key_pk>/toggle/", endpoints.key_toggle, name="key_toggle"),
    path("keys/<int:key_pk>/delete/", endpoints.key_delete, name="key_delete"),
    # request log
    path("requests/", logs.request_list, name="requests"),
    path("requests/export.csv", logs.request_export, name="requests_export"),
    path("requests/<int:pk>/", logs.request_detail, name="request_detail"),
    # runs
    path("runs/", runs.run_list, name="runs"),
    path("runs/<str:ve_public_id>/<path:run_id>/", runs.run_detail, name="run_detail"),
    # organization
    path("rates/", org.rates, name="rates"),
    path("settings/", org.org_settings, name="org_settings"),
    path("members/", org.members, name="members"),
    path("members/<int:pk>/role/", org.member_role, name="member_role"),
    path("members/<int:pk>/remove/", org.member_remove, name="member_remove"),
    path("invitations/<int:pk>/revoke/", org.invitation_revoke, name="invitation_revoke"),
    # playground
    path("playground/", playground.playground, name="playground"),
    path("playground/stream/", playground.playground_stream, name="playground_stream"),
    path("playground/result/", playground.playground_result, name="playground_result"),
]
