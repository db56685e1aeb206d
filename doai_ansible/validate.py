"""Validation of everything an operator types, before any remote command runs.

Values are checked against tight patterns and then passed as single argv elements or JSON
extra vars, never pasted into a shell string.
"""

from __future__ import annotations

import re

from doai_ansible.errors import ValidationError

# A commit SHA or a ref name. Stricter than git-check-ref-format on purpose: no leading '-'
# (option injection), no '..' (ranges, path escapes), no '//', no '@{' (reflog syntax), no
# spaces, quotes or shell metacharacters. Mirrored in roles/doai_backend_pm2/vars/main.yml.
REF_PATTERN = r"(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock\Z)(?!.*[/.]\Z)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}"
_REF_RE = re.compile(REF_PATTERN)
_HOST_PATTERN_RE = re.compile(r"[A-Za-z0-9_.:\-\[\]*]{1,253}")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def git_ref(value: str | None, *, option: str = "--to") -> str | None:
    """A commit SHA or ref name, or None (choose the default target)."""
    if value is None:
        return None
    if value == "":
        raise ValidationError(f"{option} is empty: give a commit SHA or ref, or leave {option} out")
    if not _REF_RE.fullmatch(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ValidationError(
            f"{option} {shown!r} is not a commit SHA or ref name",
            hint="use letters, digits and . _ / - only, not starting with '-', without '..'",
        )
    return value


def host_limit(value: str | None) -> str | None:
    """An Ansible --limit: host names or group names separated by commas."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not value.strip() or any(not _HOST_PATTERN_RE.fullmatch(v) for v in items):
        raise ValidationError(f"--limit {value!r} is not a comma-separated list of host or group names")
    return ",".join(items)


def reason(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > 500:
        raise ValidationError("--reason is longer than 500 characters")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise ValidationError("--reason must be one line of text")
    return value or None


def run_id(value: str) -> str:
    if not _RUN_ID_RE.fullmatch(value or ""):
        raise ValidationError(f"{value!r} is not a run id (see `doai-rollback history`)")
    return value


# Docker: a tag, and an image id written with its algorithm (a bare hex string is a tag: CI
# systems tag images with commit SHAs). Mirrored in roles/doai_backend_docker/vars/main.yml.
DOCKER_TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_ID_PATTERN = r"sha256:[0-9a-f]{12,64}"
_TAG_RE = re.compile(DOCKER_TAG_PATTERN)
_IMAGE_ID_RE = re.compile(IMAGE_ID_PATTERN)


def image_ref(value: str | None, *, option: str = "--to") -> str | None:
    """A Docker tag or image id (``sha256:<12-64 hex>``), or None (the role's default tag)."""
    if value is None:
        return None
    if value == "":
        raise ValidationError(f"{option} is empty: give a tag or an image id, or leave {option} out")
    if not (_TAG_RE.fullmatch(value) or _IMAGE_ID_RE.fullmatch(value)):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValidationError(
            f"{option} {shown!r} is neither a Docker tag nor an image id",
            hint="a tag: letters, digits and _ . - (not starting with . or -), at most 128; an image id: "
            "sha256:<hex> as `docker images --no-trunc` shows it",
        )
    return value
