# -*- coding: utf-8 -*-
# Copyright: doai-ansible contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rule of what is secret, on the hosts and on the controller.

- :func:`is_secret_name`: whether an environment variable (or a ``name=value`` key in a log
  line) holds a secret, by the words of its name;
- :func:`secret_values`: the values of an environment's secret-named variables;
- :func:`scrub`: text with secrets replaced by ``***``: the given values, the value after a
  secret-named key (``SUPABASE_SERVICE_ROLE_KEY=...``, ``"password": "..."``,
  ``Authorization: Bearer ...``), passwords in URLs (``postgres://app:pw@db``), JWTs and
  well-known token formats.

Ansible modules import it as
``ansible_collections.doai.rollback.plugins.module_utils.doai_secrets``; the controller loads this same file (``doai_ansible.secrets``). Python 2.7 and
3.x, standard library only.
"""

from __future__ import absolute_import, division, print_function

import re

REDACTED = "***"

# Names the controller reads secrets from, whatever the rule below says.
SECRET_ENV = ("VERCEL_TOKEN", "DOAI_DATABASE_URL", "DOAI_STATE_DATABASE_URL", "DOAI_WINRM_PASSWORD",
              "DOAI_SSH_PASSWORD", "DOAI_WEBHOOK_URL")

# A word of the name (split on _ - . and camelCase) that says it holds a secret.
_SECRET_WORDS = frozenset((
    "KEY", "KEYS", "APIKEY", "TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS", "PASSWD", "PASSPHRASE",
    "PASS", "PWD_HASH", "DSN", "CREDENTIAL", "CREDENTIALS", "CREDS", "PRIVATE", "AUTH", "AUTHORIZATION", "OAUTH",
    "COOKIE", "COOKIES", "SESSION", "JWT", "WEBHOOK", "SIGNATURE", "SALT", "CERTKEY",
))
# Text anywhere in the name (names written without separators: GITHUBTOKEN, DBPASSWORD).
_SECRET_PARTS = ("PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "SECRET", "CREDENTIAL", "WEBHOOK", "APIKEY",
                 "PRIVATEKEY", "ACCESSKEY", "SERVICEROLEKEY", "ANONKEY")
# A URL of a database or queue (its password may be in it): DATABASE_URL, REDIS_URI, MONGO_DSN ...
_STORE_URL_RE = re.compile(r"(^|_)(DATABASE|DB|POSTGRES|POSTGRESQL|PG|MYSQL|MONGO|MONGODB|REDIS|AMQP|RABBITMQ|"
                           r"BROKER|CACHE|SUPABASE_DB)(_[A-Z0-9]+)*_(URL|URI|DSN|CONNECTION|CONN|CONNSTR)$")
# Names that mention a secret but hold none: a file or socket path (ANSIBLE_PRIVATE_KEY_FILE,
# POSTGRES_PASSWORD_FILE, SSH_AUTH_SOCK, ANSIBLE_GALAXY_TOKEN_PATH), a switch or a mechanism.
_NOT_SECRET_SUFFIX_RE = re.compile(r"_(FILE|PATH|DIR|SOCK|CHECKING|MECHANISM|ENABLED|TIMEOUT|TTL)$")
_NOT_SECRET = frozenset(("ANSIBLE_ASK_PASS", "ANSIBLE_ASK_VAULT_PASS", "ANSIBLE_BECOME_ASK_PASS", "PWD", "OLDPWD",
                         "XAUTHORITY"))
_NOT_SECRET_PREFIX = ("XDG_SESSION_", "DBUS_SESSION_")
_CAMEL_RE = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT_RE = re.compile(r"[^A-Z0-9]+")


def _norm(name):
    return _CAMEL_RE.sub(r"\1_\2", str(name)).upper()


def is_secret_name(name):
    """Whether a variable of this name holds a secret (kept from child processes, its value
    scrubbed from text)."""
    if name in SECRET_ENV:
        return True
    n = _norm(name)
    if n in _NOT_SECRET or n.startswith(_NOT_SECRET_PREFIX) or _NOT_SECRET_SUFFIX_RE.search(n):
        return False
    words = [w for w in _SPLIT_RE.split(n) if w]
    # A host key or a public key is not a secret (ANSIBLE_HOST_KEY_AUTO_ADD, SSH_PUBLIC_KEY).
    words = [w for i, w in enumerate(words) if not (w == "KEY" and i and words[i - 1] in ("HOST", "PUBLIC"))]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words) or any(w.endswith("KEY") and len(w) > 3 for w in words):
        return True
    joined = "".join(words)
    if any(p in joined for p in _SECRET_PARTS):
        return True
    return bool(_STORE_URL_RE.search("_".join(words)))


# Values that are never secrets (a switch, a small number): scrubbing them would garble every line.
_PLAIN_VALUE_RE = re.compile(r"^(true|false|yes|no|on|off|none|null|nil|undefined|[0-9]{1,7})$", re.IGNORECASE)


def secret_values(env):
    """The values of ``env`` (a dict) held by secret-named variables, longest first (a value that
    contains another is replaced whole); values shorter than 4 characters and plain switches or
    small numbers are left out."""
    vals = set()
    for k, v in (env or {}).items():
        if v is None or not is_secret_name(str(k)):
            continue
        v = str(v)
        if len(v) >= 4 and not _PLAIN_VALUE_RE.match(v):
            vals.add(v)
    return sorted(vals, key=len, reverse=True)


def url_has_password(value):
    return bool(_URL_PASSWORD_RE.search(str(value)))


# scheme://user:password@ (the user may be empty: redis://:pw@host).
_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)", re.IGNORECASE)
# A JWT (header.payload.signature, base64url; Supabase's anon and service_role keys are JWTs).
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Tokens known by their shape.
_KNOWN_TOKEN_RE = re.compile(
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"  # Stripe
    r"|\bgh[pousr]_[A-Za-z0-9]{16,}|\bgithub_pat_[A-Za-z0-9_]{16,}"  # GitHub
    r"|\bxox[abprse]-[A-Za-z0-9-]{8,}"  # Slack
    r"|\bsb_secret_[A-Za-z0-9_-]{8,}"  # Supabase secret keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*")
# An HTTP credential: "Bearer <token>", "Basic <base64>" (with or without "Authorization:").
_AUTH_SCHEME_RE = re.compile(r"\b(Bearer|Basic|Token|Digest|Negotiate)(\s+)([A-Za-z0-9._~+/=:-]{4,})", re.IGNORECASE)
# name=value, name: value, "name": "value", name='value' (the value up to a quote, space, , ; &).
_PAIR_RE = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<q1>["']?)(?P<sep>\s*[=:]\s*)(?P<q2>["']?)"""
    r"""(?P<scheme>(?:Bearer|Basic|Token|Digest)\s+)?(?P<value>[^\s"',;&}\]]+)""", re.IGNORECASE)


def _pair(m):
    value = m.group("value")
    if not is_secret_name(m.group("name").strip(".-")) or value == REDACTED or _PLAIN_VALUE_RE.match(value):
        return m.group(0)
    return "%s%s%s%s%s%s" % (m.group("name"), m.group("q1"), m.group("sep"), m.group("q2"), m.group("scheme") or "",
                             REDACTED)


def scrub(text, values=()):
    """``text`` with every secret replaced by ``***``: ``values`` (e.g. :func:`secret_values` of
    the process that wrote it), then by shape (see the module's docstring)."""
    if not text:
        return text
    for v in values or ():
        if v:
            text = text.replace(v, REDACTED)
    text = _KNOWN_TOKEN_RE.sub(REDACTED, text)
    text = _JWT_RE.sub(REDACTED, text)
    text = _URL_PASSWORD_RE.sub(r"\1" + REDACTED + r"\3", text)
    text = _AUTH_SCHEME_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _PAIR_RE.sub(_pair, text)


def scrub_lines(text, values=(), lines=None):
    """:func:`scrub` of the last ``lines`` lines of ``text`` (all when None)."""
    kept = (text or "").splitlines()
    if lines is not None:
        kept = kept[-lines:] if lines > 0 else []
    return scrub("\n".join(kept), values)
