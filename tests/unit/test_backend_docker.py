"""The backend's Docker mode without a Docker engine: which Compose a host gets, input patterns
(the controller's and the role's agree), and which hosts go to which mode (a real inventory read
by Ansible's own inventory code)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from doai_ansible import validate
from doai_ansible.context import RunContext
from doai_ansible.errors import UsageError, ValidationError
from doai_ansible.parts.backend import BackendPart
from doai_ansible.settings import load_settings

from tests.conftest import module_utils

ROLE = Path(__file__).resolve().parents[2] / "roles" / "doai_backend_docker"
# As Ansible ships it: the collection's module_utils (doai_docker imports doai_secrets).
dd = module_utils("doai_docker")


# -- Compose v2 or v1 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "v2", "v1", "want"),
    [
        ("auto", True, "/usr/bin/docker-compose", ["docker", "compose"]),  # v2 preferred
        ("auto", False, "/usr/bin/docker-compose", ["/usr/bin/docker-compose"]),
        ("auto", True, None, ["docker", "compose"]),
        ("v1", True, "/usr/bin/docker-compose", ["/usr/bin/docker-compose"]),
        ("v2", True, None, ["docker", "compose"]),
    ],
)
def test_compose_choice(setting, v2, v1, want):
    assert dd.choose_compose(setting, "docker", v2, v1) == want


@pytest.mark.parametrize(("setting", "v2", "v1"), [("auto", False, None), ("v2", False, "/x/docker-compose"),
                                                   ("v1", True, None)])
def test_compose_missing_is_a_refusal_naming_what_is_missing(setting, v2, v1):
    with pytest.raises(dd.DockerError) as exc:
        dd.choose_compose(setting, "docker", v2, v1)
    assert exc.value.kind == "compose_unavailable"
    assert "available on this host" in str(exc.value)


def test_compose_setting_is_checked():
    with pytest.raises(dd.DockerError) as exc:
        dd.choose_compose("v3", "docker", True, None)
    assert exc.value.kind == "invalid_setting"


# -- inputs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["previous", "v1.2.3", "2026-11-20_3", "a1b2c3d", "sha256:" + "a" * 64,
                                  "sha256:0123456789ab"])
def test_image_refs_accepted(good):
    assert validate.image_ref(good) == good


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a:b", "a/b", "x y", "$(id)", "sha256:XYZ", "sha256:abc",
                                 "t" * 129, "previous;rm -rf /"])
def test_image_refs_refused(bad):
    with pytest.raises(ValidationError):
        validate.image_ref(bad)


def test_role_patterns_mirror_the_controllers():
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert role_vars["doai_backend_docker__tag_pattern"] == "^" + validate.DOCKER_TAG_PATTERN + r"\Z"
    assert role_vars["doai_backend_docker__id_pattern"] == "^" + validate.IMAGE_ID_PATTERN + r"\Z"
    assert dd.TAG_RE.pattern == validate.DOCKER_TAG_PATTERN + r"\Z"
    assert dd.IMAGE_ID_RE.pattern == validate.IMAGE_ID_PATTERN + r"\Z"
    repo = re.compile(role_vars["doai_backend_docker__repo_pattern"])
    for name in ("doai-backend", "registry.example.com/doai-backend", "127.0.0.1:5000/doai/backend",
                 "localhost:5000/a_b", "ghcr.io/acme/doai-backend"):
        assert repo.match(name) and dd.REPO_RE.match(name), name
    for name in ("Doai", "-x", "registry.example.com/", "a//b", "a/b:tag", "a b", "reg:99999999/x"):
        assert not dd.REPO_RE.match(name), name
        assert not repo.match(name), name


@pytest.mark.parametrize(("repo", "loopback"), [
    ("127.0.0.1:5000/doai-backend", True), ("localhost:5000/x", True), ("127.9.9.9/x", True),
    ("registry.example.com/doai-backend", False), ("doai-backend", False), ("128.0.0.1:5000/x", False),
    ("library/doai-backend", False),
])
def test_plain_http_only_for_a_loopback_registry(repo, loopback):
    assert dd.registry_is_loopback(repo) is loopback


# -- which hosts run which mode ----------------------------------------------------------------------
@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text(json.dumps({"all": {"children": {"backend": {
        "hosts": {"vps1": {}, "vps2": {"doai_backend_mode": "pm2"}},
        "children": {"backend_docker": {"hosts": {"dock1": {}, "dock2": {}}}}}}}}))
    (inv / "group_vars" / "backend_docker.yml").write_text("doai_backend_mode: docker\n")
    settings = load_settings(None, inventory=inv / "hosts.yml", state_dir=tmp_path / "state", env={})
    return RunContext.create(settings)


def test_modes_come_from_host_and_group_vars(ctx):
    part = BackendPart()
    assert part.split(ctx, None) == {"pm2": ["vps1", "vps2"], "docker": ["dock1", "dock2"]}
    assert part.split(ctx, "backend_docker") == {"docker": ["dock1", "dock2"]}
    assert part.split(ctx, "vps1,dock2") == {"pm2": ["vps1"], "docker": ["dock2"]}
    assert part.split(ctx, "vps1", override="docker") == {"docker": ["vps1"]}


def test_a_limit_matching_no_backend_host_is_refused_before_anything_runs(ctx):
    with pytest.raises(UsageError) as exc:
        BackendPart().request(limit="vps9", ctx=ctx)
    assert "matches no host" in str(exc.value) and "dock1" in str(exc.value)


def test_to_is_checked_for_the_mode_of_the_hosts(ctx):
    part = BackendPart()
    # a..b is a valid Docker tag but not a git ref: refused for PM2 hosts, taken for Docker ones
    with pytest.raises(ValidationError, match="commit SHA or ref"):
        part.request(to="a..b", limit="vps1", ctx=ctx)
    assert part.request(to="a..b", limit="dock1", ctx=ctx).to == "a..b"
    # a ref with a slash is a git ref, not a tag
    with pytest.raises(ValidationError, match="Docker tag"):
        part.request(to="release/v2", limit="dock1", ctx=ctx)
    with pytest.raises(ValidationError, match="neither"):
        part.request(to="$(id)", ctx=ctx)
    with pytest.raises(ValidationError, match="--mode"):
        part.request(mode="k8s", ctx=ctx)


def test_a_bad_mode_in_the_inventory_is_a_configuration_error(ctx, tmp_path):
    (tmp_path / "inventory" / "group_vars" / "backend_docker.yml").write_text("doai_backend_mode: podman\n")
    with pytest.raises(UsageError, match="doai_backend_mode is 'podman'"):
        BackendPart().split(ctx, None)


def test_defaults_argument_specs_and_example_inventory_agree():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert set(specs["main"]["options"]) == set(defaults)
    for entry in ("main", "status", "release_lock"):
        for name, spec in specs[entry]["options"].items():
            assert spec["default"] == defaults[name], (entry, name)
            assert spec.get("description"), name
    example = yaml.safe_load((ROLE.parents[1] / "inventory" / "example" / "group_vars" / "backend_docker.yml").read_text())
    assert example.pop("doai_backend_mode") == "docker"
    assert example == defaults


def test_an_inventory_that_never_names_a_mode_is_not_read_before_a_run(tmp_path):
    from doai_ansible.inventory import declares_modes

    inv = tmp_path / "inv"
    inv.mkdir()
    hosts = inv / "hosts.yml"
    hosts.write_text("all:\n  children:\n    backend:\n      hosts:\n        vps1: {}\n")
    assert declares_modes(hosts) is False
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "backend.yml").write_text("doai_backend_pm2_path: /srv/app\n")
    assert declares_modes(hosts) is False
    (inv / "host_vars").mkdir()
    (inv / "host_vars" / "vps1.yml").write_text("doai_backend_mode: docker\n")
    assert declares_modes(hosts) is True  # then it is read, host by host
    (inv / "host_vars" / "vps1.yml").unlink()
    plugin = tmp_path / "aws_ec2.yml"
    plugin.write_text("plugin: amazon.aws.aws_ec2\n")
    assert declares_modes(plugin) is True  # a plugin may set anything
    assert declares_modes(inv) is False  # a folder of static files


def test_pm2_only_inventory_goes_straight_to_the_pm2_part(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    backend:\n      hosts:\n        vps1: {}\n")
    ctx = RunContext.create(load_settings(None, inventory=inv, state_dir=tmp_path / "state", env={}))
    part = BackendPart()
    ((mode, sub),) = part._plan_split(ctx, part.request(limit="vps9"))
    assert mode == "pm2" and sub.limit == "vps9"  # the PM2 run says that vps9 matches nothing
    with pytest.raises(ValidationError):  # --to still checked for PM2 before anything runs
        part.request(to="a..b", ctx=ctx)


# -- a fleet with both modes: applied side by side, all or nothing ----------------------------------
class _Mode:
    """One mode's hosts as the dispatcher sees them (the playbook runs stand in): ``apply``
    waits until every mode has started (a dispatcher that applies the modes one after the
    other never gets there), then answers ``outcome`` per host or raises ``refuse``."""

    def __init__(self, name, started, outcome=None, refuse=None):
        self.name, self.started, self.outcome, self.refuse = name, started, outcome, refuse
        self.reverted: list[str] = []

    def apply(self, ctx, steps, request):
        from doai_ansible.model import StepResult, utcnow

        self.started[self.name].set()
        assert all(e.wait(5) for e in self.started.values()), "the modes were not applied side by side"
        if self.refuse:
            raise self.refuse
        return [StepResult(s, self.outcome, self.outcome.value, utcnow(), utcnow()) for s in steps]

    def revert(self, ctx, results, reason):
        from doai_ansible.model import Outcome

        self.reverted += [r.step.target for r in results]
        for r in results:
            r.outcome = Outcome.RESTORED
        return results


def _two_modes(ctx, pm2, docker):
    import threading

    from doai_ansible.model import Part, Step

    started = {"pm2": threading.Event(), "docker": threading.Event()}
    part = BackendPart()
    part.modes = {"pm2": _Mode("pm2", started, **pm2), "docker": _Mode("docker", started, **docker)}
    steps = [Step(Part.BACKEND, h, "a", "b", details={"mode": m})
             for h, m in (("vps1", "pm2"), ("vps2", "pm2"), ("dock1", "docker"), ("dock2", "docker"))]
    return part, steps, part.request(ctx=ctx)


def test_both_modes_are_applied_side_by_side(ctx):
    from doai_ansible.model import Outcome

    part, steps, req = _two_modes(ctx, {"outcome": Outcome.SUCCEEDED}, {"outcome": Outcome.SUCCEEDED})
    results = part.apply(ctx, steps, req)
    assert {r.step.target: r.outcome for r in results} == dict.fromkeys(["dock1", "dock2", "vps1", "vps2"],
                                                                         Outcome.SUCCEEDED)
    assert part.modes["pm2"].reverted == [] and part.modes["docker"].reverted == []


def test_a_mode_that_fails_puts_the_other_modes_hosts_back(ctx):
    from doai_ansible.model import Outcome

    part, steps, req = _two_modes(ctx, {"outcome": Outcome.SUCCEEDED}, {"outcome": Outcome.RESTORED})
    results = {r.step.target: r for r in part.apply(ctx, steps, req)}
    assert part.modes["pm2"].reverted == ["vps1", "vps2"] and part.modes["docker"].reverted == []
    assert all(results[h].outcome is Outcome.RESTORED for h in results)
    assert "put back because a host of the other mode failed" in results["vps1"].message


def test_a_mode_that_refuses_puts_the_other_back_and_both_refusing_is_one_refusal(ctx):
    from doai_ansible.model import Outcome

    moved = ValidationError("dock1: moved since the plan")
    part, steps, req = _two_modes(ctx, {"outcome": Outcome.SUCCEEDED}, {"refuse": moved})
    results = {r.step.target: r for r in part.apply(ctx, steps, req)}
    assert part.modes["pm2"].reverted == ["vps1", "vps2"]
    assert results["dock1"].outcome is Outcome.REFUSED and "moved since the plan" in results["dock1"].message
    part, steps, req = _two_modes(ctx, {"refuse": ValidationError("vps1: moved")}, {"refuse": moved})
    with pytest.raises(ValidationError, match="vps1: moved"):  # nothing changed anywhere: the first refusal
        part.apply(ctx, steps, req)


def test_a_mode_that_breaks_puts_the_other_back_before_the_error_ends_the_run(ctx):
    """An error that is not a refusal (a bug, an I/O error) in one mode ends the run as before,
    but only once the other mode's hosts, which went through side by side, are put back."""
    from doai_ansible.model import Outcome

    part, steps, req = _two_modes(ctx, {"refuse": OSError("disk full")}, {"outcome": Outcome.SUCCEEDED})
    with pytest.raises(OSError, match="disk full"):
        part.apply(ctx, steps, req)
    assert part.modes["docker"].reverted == ["dock1", "dock2"]


def test_the_modes_run_in_daemon_threads():
    """A second SIGINT interrupts the wait for the modes at once; the process must then be able
    to end (a non-daemon thread would hold it until the playbooks finish)."""
    import threading

    from doai_ansible.engine import at_once

    seen = at_once({"a": lambda: threading.current_thread().daemon, "b": lambda: threading.current_thread().daemon})
    assert seen == {"a": True, "b": True}
