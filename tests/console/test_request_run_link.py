"""A request's page links its run id to the Runs page of that run."""

from __future__ import annotations

from django.urls import reverse

from tests.console.test_queries import make_logs


def test_request_page_links_to_its_run(owner_client, world):
    # given: a call tagged with a run id that needs quoting in a URL
    ve = world["mine"]["ve"]
    log = make_logs(world["mine"], 1, run_id="agent 7/step")[0]
    run_url = reverse("console:run_detail", args=[ve.public_id, "agent 7/step"])
    # when
    page = owner_client.get(reverse("console:request_detail", args=[log.pk])).content.decode()
    # then: the link leads to the run's page
    assert f'href="{run_url}"' in page
    assert owner_client.get(run_url).status_code == 200


def test_request_without_a_run_has_no_run_link(owner_client, world):
    log = make_logs(world["mine"], 1)[0]
    page = owner_client.get(reverse("console:request_detail", args=[log.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "/console/runs/" not in page.split("Run id", 1)[1].split("</dd>", 1)[0]
