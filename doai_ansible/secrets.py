"""The one rule of what is secret (names and values), shared with the hosts.

The rule lives in ``plugins/module_utils/doai_secrets.py``, the file Ansible ships to the hosts
as ``ansible_collections.doai.rollback.plugins.module_utils.doai_secrets``; the controller loads that same file from
this package's own content (the repository, or ``_content`` inside the wheel), never from
``DOAI_CONTENT_DIR``: what is kept from child processes does not depend on a setting.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

_REL = Path("plugins") / "module_utils" / "doai_secrets.py"


def _path() -> Path:
    here = Path(__file__).resolve().parent
    for base in (here / "_content", here.parent):
        if (base / _REL).is_file():
            return base / _REL
    raise ImportError(f"{_REL} is missing from this installation of doai-ansible")


def _load() -> ModuleType:
    name = "doai_ansible._doai_secrets"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _path())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_rule = _load()

REDACTED: str = _rule.REDACTED
SECRET_ENV: tuple[str, ...] = _rule.SECRET_ENV
is_secret_name = _rule.is_secret_name
secret_values = _rule.secret_values
scrub = _rule.scrub
url_has_password = _rule.url_has_password


def scrub_here(text: str, environ: Mapping[str, str] | None = None) -> str:
    """:func:`scrub` with the secret values of this process's environment (the database URL,
    the Vercel token ...) as well: for text the controller keeps (the hosts scrubbed theirs)."""
    env = os.environ if environ is None else environ
    return scrub(text, secret_values(dict(env)))
