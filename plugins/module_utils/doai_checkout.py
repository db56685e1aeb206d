# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only git probes of an app checkout, shared by the capture, inspect and prepare modules."""

from __future__ import annotations

import json
import os
import re

# A ref or SHA an operator may name. Stricter than git-check-ref-format on purpose: no
# leading '-', no '..', no '@{', no spaces or shell metacharacters. The role's
# vars/main.yml and doai_ansible.validate hold the same pattern.
REF_RE = re.compile(r"(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock\Z)(?!.*[/.]\Z)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
# A full commit id (SHA-1, or SHA-256 repositories): what a confirmed plan pins.
FULL_SHA_RE = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


class Checkout(object):
    """git -C PATH ..., through the module's run_command (no shell, C locale, never prompts)."""

    def __init__(self, module, path, git_bin):
        self.module, self.path, self.git_bin = module, path, git_bin

    def git(self, args, check=True):
        rc, out, err = self.module.run_command(
            [self.git_bin, "-C", self.path] + list(args),
            environ_update={"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"},
        )
        if check and rc != 0:
            self.module.fail_json(msg="git %s failed: %s" % (args[0], (err or out).strip()), rc=rc)
        return rc, out, err

    def is_top(self):
        """The path exists and is the top directory of a git work tree."""
        if not os.path.isdir(self.path):
            return False
        rc, out, _ = self.git(["rev-parse", "--show-toplevel"], check=False)
        return rc == 0 and os.path.realpath(out.strip()) == os.path.realpath(self.path)

    def require_top(self):
        """Fail the module (result key bad_path) unless the path is the top of a git work tree."""
        if not self.is_top():
            self.module.fail_json(msg="%s is not the top of a git checkout on this host; set doai_backend_pm2_path"
                                  % self.path, bad_path=True)
        return self

    def head(self):
        return self.git(["rev-parse", "--verify", "HEAD^{commit}"])[1].strip()

    def branch(self):
        _, out, _ = self.git(["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
        return out.strip() or None

    def dirty(self):
        """`git status --porcelain` lines: uncommitted changes and untracked files."""
        _, out, _ = self.git(["status", "--porcelain=v1", "--untracked-files=normal"])
        return [line for line in out.splitlines() if line.strip()]

    def recent(self, count):
        _, out, _ = self.git(["log", "--no-decorate", "--format=%h %s", "-n", str(count)])
        return out.splitlines()

    def resolve(self, ref):
        """Full SHA of the commit ``ref`` names, or None."""
        rc, out, _ = self.git(["rev-parse", "--verify", "--quiet", "--end-of-options", ref + "^{commit}"], check=False)
        return out.strip() if rc == 0 else None

    def reflog(self):
        """Commits HEAD pointed at, newest first."""
        _, out, _ = self.git(["reflog", "show", "--format=%H", "HEAD"], check=False)
        return out.split()

    def show(self, sha, name):
        """Text of file ``name`` at commit ``sha``, or None when it has none."""
        rc, out, _ = self.git(["show", "%s:%s" % (sha, name)], check=False)
        return out if rc == 0 else None

    def differ(self, a, b, names):
        """Whether any of the files ``names`` differs between commits ``a`` and ``b``."""
        rc, _, _ = self.git(["diff", "--quiet", a, b, "--"] + list(names), check=False)
        return rc == 1

    def version_at(self, sha):
        """package.json's "version" at commit ``sha``, or None."""
        text = self.show(sha, "package.json")
        try:
            version = json.loads(text).get("version") if text else None
        except (ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None
