"""Contract: the official Vercel CLI (58.10.0) completes rollback, promote, their status and list
against the stand-in. That keeps the stand-in honest: as far as the official client can tell, it
behaves like the real API, so what our client is tested against is not a fiction of our own.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

import pytest

from doai_ansible.errors import RollbackFailed
from doai_ansible.model import Outcome
from doai_ansible.parts import dashboard

if TYPE_CHECKING:  # imported by pytest_plugins; importing it here first would defeat assert rewriting
    from tests.integration.conftest_vercel import VercelCli

pytest_plugins = ["tests.integration.conftest_vercel"]
pytestmark = pytest.mark.integration


def output(proc) -> str:
    return proc.stdout + proc.stderr


def test_cli_version_is_the_pinned_one(vercel_cli: VercelCli) -> None:
    proc = vercel_cli.run("--version")
    assert proc.returncode == 0, output(proc)
    assert "58.10.0" in output(proc)


def test_cli_lists_the_linked_projects_deployments_page_by_page(vercel_cli: VercelCli) -> None:
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    proc = vercel_cli.run("list")
    assert proc.returncode == 0, output(proc)
    listed = set(re.findall(r"https://(\S+\.vercel\.app)", proc.stdout))
    dashboard_urls = {d.url for d in api.deployments.values() if d.project_id == world.project.id}
    assert listed == dashboard_urls  # all of this project's deployments, none of the neighbours'
    assert world.other_project_deployment.url not in output(proc)

    first = vercel_cli.run("list", "--prod", "--limit", "3")
    assert first.returncode == 0, output(first)
    assert world.current.url in first.stdout and world.preview.url not in first.stdout
    nxt = re.search(r"--next (\d+)", output(first))
    assert nxt, output(first)
    second = vercel_cli.run("list", "--prod", "--limit", "3", "--next", nxt.group(1))
    assert second.returncode == 0, output(second)
    assert world.canceled.url in second.stdout and world.current.url not in second.stdout
    last = api.requests_to("GET", "/v6/deployments")[-1]
    assert last.query["until"] == nxt.group(1) and last.query["target"] == "production"


def test_cli_rollback_moves_production_and_status_reports_it(vercel_cli: VercelCli) -> None:
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    proc = vercel_cli.run("rollback", world.expected_target.id, "--yes")
    assert proc.returncode == 0, output(proc)
    assert api.production_of(world.project) == world.expected_target.id
    (post,) = api.mutating_requests()
    assert post.path == f"/v9/projects/{world.project.id}/rollback/{world.expected_target.id}"
    assert "Success!" in output(proc)

    status = vercel_cli.run("rollback", "status")
    assert status.returncode == 0, output(status)
    assert f"rolled back to {world.expected_target.url} ({world.expected_target.id})" in output(status)


def test_cli_rollback_by_url_then_promote_back(vercel_cli: VercelCli) -> None:
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    proc = vercel_cli.run("rollback", f"https://{world.older_ready.url}", "--yes")
    assert proc.returncode == 0, output(proc)
    assert api.production_of(world.project) == world.older_ready.id

    promote = vercel_cli.run("promote", world.current.id, "--yes")
    assert promote.returncode == 0, output(promote)
    assert api.production_of(world.project) == world.current.id
    assert api.mutating_requests()[-1].path == f"/v10/projects/{world.project.id}/promote/{world.current.id}"

    status = vercel_cli.run("promote", "status")
    assert status.returncode == 0, output(status)
    assert f"promoted to {world.current.url} ({world.current.id})" in output(status)


def test_cli_reports_the_failed_aliases_of_a_failed_rollback(vercel_cli: VercelCli) -> None:
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    api.queue_job_outcomes("failed")
    proc = vercel_cli.run("rollback", world.expected_target.id, "--yes")
    assert proc.returncode == 1, output(proc)
    assert "Failed to remap all aliases" in output(proc)
    assert "dashboard.doai.me" in output(proc)
    (aliases,) = api.requests_to("GET", rf"/v9/projects/{world.project.id}/rollback/aliases")
    assert aliases.query["failedOnly"] == "true"
    assert api.production_of(world.project) == world.current.id


def test_cli_is_refused_a_preview_and_a_wrong_token_without_anything_changing(vercel_cli: VercelCli) -> None:
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    denied = vercel_cli.run("rollback", world.expected_target.id, "--yes", token="wrongToken123")
    assert denied.returncode != 0, output(denied)
    assert api.mutating_requests() == []  # stopped at the token check (GET /v2/user -> 401)
    # The CLI leaves it to the API to refuse a preview (our client refuses before sending).
    preview = vercel_cli.run("rollback", world.preview.id, "--yes")
    assert preview.returncode != 0, output(preview)
    (post,) = api.mutating_requests()
    assert post.status == 400
    assert api.production_of(world.project) == world.current.id
    assert api.projects[world.project.id].last_alias_request is None


def test_cli_is_refused_a_deployment_that_was_never_live(vercel_cli: VercelCli) -> None:
    """The CLI (58.10.0) does not check rollback eligibility itself (it sends no rollbackCandidate
    and reads no isRollbackCandidate): the API refuses, and the stand-in does as Vercel does."""
    world, api = vercel_cli.rig.world, vercel_cli.rig.api
    proc = vercel_cli.run("rollback", world.staged.id, "--yes")
    assert proc.returncode != 0, output(proc)
    assert "cannot be rolled back to" in output(proc)
    (post,) = api.mutating_requests()
    assert post.status == 400
    assert api.production_of(world.project) == world.current.id
    assert api.projects[world.project.id].last_alias_request is None
    listed = vercel_cli.run("list", "--prod")
    assert listed.returncode == 0 and world.staged.url in listed.stdout  # listed, just not a candidate


def test_the_commands_of_a_not_restored_result_work_with_the_cli(vercel_cli: VercelCli) -> None:
    """API lost right after an accepted rollback: the commands the result names check and undo it."""
    rig = vercel_cli.rig
    settings = rig.settings(max_retries=1)
    rig.api.arm_outage(method="POST")
    step = dashboard.plan_dashboard_rollback(settings)
    with pytest.raises(RollbackFailed) as info:
        dashboard.apply_dashboard_rollback(step, settings, "contract check")
    result = info.value.result
    assert result.outcome is Outcome.NOT_RESTORED
    check, undo = (shlex.split(c) for c in result.step.details["by_hand"])
    assert check[0] == undo[0] == "vercel"
    rig.api.end_outage()

    status = vercel_cli.run(*check[1:], scope=False)
    assert status.returncode == 0, output(status)
    target = rig.world.expected_target
    assert f"rolled back to {target.url} ({target.id})" in output(status)  # the rollback did happen
    assert rig.api.production_of(rig.world.project) == target.id

    back = vercel_cli.run(*undo[1:], scope=False)
    assert back.returncode == 0, output(back)
    assert rig.api.production_of(rig.world.project) == rig.world.current.id


def test_cli_sees_the_rollback_our_client_made(vercel_cli: VercelCli) -> None:
    """Both clients agree on the state: what we do is what `vercel rollback status` reports."""
    rig = vercel_cli.rig
    settings = rig.settings()
    step = dashboard.plan_dashboard_rollback(settings)
    dashboard.apply_dashboard_rollback(step, settings, "contract check")
    status = vercel_cli.run("rollback", "status")
    assert status.returncode == 0, output(status)
    target = rig.world.expected_target
    assert f"rolled back to {target.url} ({target.id})" in output(status)
