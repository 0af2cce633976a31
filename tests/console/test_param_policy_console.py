"""The logical model's unsupported-parameter policy in the console form."""

from django.urls import reverse

from routing.models import LogicalModel


def test_the_form_sets_the_policy_and_a_post_without_it_keeps_drop(owner_client, org):
    response = owner_client.post(reverse("console:logical_new"), {
        "name": "strict", "modality": "chat", "default_max_output_tokens": "4096", "unsupported_params": "reject",
        "enabled": "on"})
    assert response.status_code == 302
    assert LogicalModel.objects.get(organization=org, name="strict").unsupported_params == "reject"
    owner_client.post(reverse("console:logical_new"), {
        "name": "lenient", "modality": "chat", "default_max_output_tokens": "4096", "enabled": "on"})
    assert LogicalModel.objects.get(organization=org, name="lenient").unsupported_params == "drop"


def test_the_form_shows_the_choice(owner_client, org):
    page = owner_client.get(reverse("console:logical_new")).content
    assert b'name="unsupported_params"' in page and b"Refuse with a 400" in page
