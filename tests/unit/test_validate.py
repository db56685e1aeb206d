import pytest

from doai_ansible import validate
from doai_ansible.errors import ExitStatus, ValidationError


@pytest.mark.parametrize(
    "ref",
    ["a1b2c3d", "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0", "main", "release/2026-02-04", "v1.2.3", "HEAD", "feature_x"],
)
def test_accepts_shas_and_ref_names(ref):
    assert validate.git_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        " ",
        "abc; rm -rf /",
        "$(id)",
        "`id`",
        "--upload-pack=touch /tmp/x",
        "-x",
        "../x",
        "a/../b",
        "a..b",
        "HEAD@{1}",
        "x\n",
        "main\nrm",
        "ref with space",
        "a//b",
        "x.lock",
        "x/",
        "x" * 201,
        "ünïcode",
        "a|b",
        "a&b",
        "'quoted'",
    ],
)
def test_rejects_what_is_not_a_ref(ref):
    with pytest.raises(ValidationError) as exc:
        validate.git_ref(ref)
    assert exc.value.exit_status is ExitStatus.USAGE
    assert "--to" in str(exc.value)


def test_none_means_default_target():
    assert validate.git_ref(None) is None


@pytest.mark.parametrize("limit", ["vps1", "vps1,vps2", "backend", "web-*.example.com", "host_1:host_2"])
def test_limit_ok(limit):
    assert validate.host_limit(limit) == limit


@pytest.mark.parametrize("limit", ["", " ", "a b", "a;b", "$(x)", "a,,b", "a,", "x'y"])
def test_limit_rejected(limit):
    with pytest.raises(ValidationError):
        validate.host_limit(limit)


def test_reason_is_one_line():
    assert validate.reason("  api 500s  ") == "api 500s"
    assert validate.reason("") is None
    with pytest.raises(ValidationError):
        validate.reason("a\nb")
    with pytest.raises(ValidationError):
        validate.reason("x" * 501)


def test_run_id():
    assert validate.run_id("20261126T092744Z-3d18d3") == "20261126T092744Z-3d18d3"
    for bad in ("", "../x", "-x", "a b"):
        with pytest.raises(ValidationError):
            validate.run_id(bad)


def test_role_pattern_matches_python_pattern():
    """The role validates on its own (direct ansible-playbook use) with the same pattern."""
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    role_vars = yaml.safe_load((root / "roles/doai_backend_pm2/vars/main.yml").read_text())
    role_re = re.compile(role_vars["doai_backend_pm2__ref_pattern"])
    for ref in ["main", "a1b2c3d", "release/x", "../x", "-x", "a..b", "x\n", "HEAD@{1}", "a b", "x.lock"]:
        py_ok = True
        try:
            validate.git_ref(ref)
        except ValidationError:
            py_ok = False
        assert bool(role_re.match(ref)) == py_ok, ref
