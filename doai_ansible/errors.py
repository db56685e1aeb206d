"""One error hierarchy; every error carries the exit status the CLI returns for it.

Exit codes are a contract with CI jobs (documented in the README):

====  ===================  ==========================================================
code  name                 meaning
====  ===================  ==========================================================
0     OK                   success (or nothing to do)
1     ERROR                unexpected internal error (a bug: run again with --debug)
2     USAGE                bad option, bad target, bad configuration; nothing was changed
3     FAILED_RESTORED      the rollback failed, but every part was put back as it was
4     FAILED_NOT_RESTORED  the rollback failed and a part could NOT be put back: act now
5     LOCKED               another rollback holds the lock for this target
6     UNHEALTHY            a health or status check found a part unhealthy
7     UNREACHABLE          a host or API could not be reached; nothing was changed
130   INTERRUPTED          stopped by Ctrl-C
====  ===================  ==========================================================
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    FAILED_RESTORED = 3
    FAILED_NOT_RESTORED = 4
    LOCKED = 5
    UNHEALTHY = 6
    UNREACHABLE = 7
    INTERRUPTED = 130


class DoaiError(Exception):
    """Base of every error the tool reports on purpose.

    ``hint`` says what the operator should do next; it is printed after the message.
    """

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(DoaiError):
    """Bad input: nothing was changed."""

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """A setting is missing or invalid; ``key`` names it."""

    def __init__(self, key: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"setting {key!r}: {message}", hint=hint)
        self.key = key


class ValidationError(UsageError):
    """A user-supplied value (ref, id, version, path) failed validation."""


class LockedError(DoaiError):
    exit_status = ExitStatus.LOCKED


class UnreachableError(DoaiError):
    exit_status = ExitStatus.UNREACHABLE


class UnhealthyError(DoaiError):
    exit_status = ExitStatus.UNHEALTHY


class RollbackFailed(DoaiError):
    """A rollback failed after it changed something.

    ``restored`` tells whether every part was put back as it was.
    """

    def __init__(
        self,
        message: str,
        *,
        restored: bool,
        hint: str | None = None,
        result: object | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.restored = restored
        self.result = result

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        return ExitStatus.FAILED_RESTORED if self.restored else ExitStatus.FAILED_NOT_RESTORED


class PlaybookError(DoaiError):
    """A playbook run failed; names the hosts and the task that failed."""

    def __init__(
        self,
        message: str,
        *,
        failed_hosts: dict[str, str] | None = None,
        unreachable_hosts: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.failed_hosts = failed_hosts or {}
        self.unreachable_hosts = unreachable_hosts or []

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        if self.unreachable_hosts and not self.failed_hosts:
            return ExitStatus.UNREACHABLE
        return ExitStatus.ERROR


class ApiError(DoaiError):
    """An HTTP API (Vercel, ...) answered with an error that retrying will not fix."""

    def __init__(self, message: str, *, status_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        if self.status_code in (400, 402, 404, 409, 422):
            return ExitStatus.USAGE
        if self.status_code is None or self.status_code >= 500 or self.status_code == 429:
            return ExitStatus.UNREACHABLE
        return ExitStatus.USAGE if self.status_code in (401, 403) else ExitStatus.ERROR
