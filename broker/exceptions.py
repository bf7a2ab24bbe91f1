"""The broker's own errors.

Each carries the HTTP status the API answers with, so domain code never imports HTTP and
handlers never guess. Messages must never contain a secret: engines pass driver errors
through ``redaction.redact`` before raising.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Internal error."""

    status: int = 500

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "error").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def errors(self) -> list[str]:
        """The ``errors`` list of the response body."""
        return [self.message]


class InvalidRequest(BrokerError):
    """Invalid request."""

    status = 400


class NotFound(BrokerError):
    """Not found."""

    status = 404

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self._explained = message is not None

    @property
    def errors(self) -> list[str]:
        # Vault answers a read of something absent with an empty error list.
        return [self.message] if self._explained else []


class PermissionDenied(BrokerError):
    """permission denied"""

    status = 403


class UnsupportedOperation(BrokerError):
    """unsupported operation"""

    status = 405


class StorageUnavailable(BrokerError):
    """The broker's storage database is unavailable."""

    status = 503


class TargetError(BrokerError):
    """The target database refused or failed the operation."""

    status = 502


class TargetUnavailable(TargetError):
    """The target database cannot be reached."""

    status = 503


class TargetUnreachable(TargetUnavailable):
    """The target database cannot be reached; nothing was sent to it."""


class StatementError(TargetError):
    """A statement template failed on the target database.

    A 400: the role's statements are wrong, not the service.
    """

    status = 400


class Sealed(BrokerError):
    """Vault is sealed"""

    status = 503


class NotInitialized(BrokerError):
    """Vault is not initialized"""

    status = 503


class KeyringChanged(BrokerError):
    """A record was sealed under a key term this node has not loaded (another node rotated)."""

    status = 503

    def __init__(self, term: int) -> None:
        super().__init__(f"unknown key term {term}")
        self.term = term


class IntegrityError(BrokerError):
    """a stored secret failed its integrity check"""

    status = 500


class RowIntegrityError(IntegrityError):
    """A stored row failed its MAC check (edited, moved or copied in storage): it is never
    used. Names the table only, never the row's contents."""

    def __init__(self, table: str) -> None:
        super().__init__(f"storage integrity check failed ({table}); the row was not used")
        self.table = table


class TooManyRequests(BrokerError):
    """A rate limit or a lease quota: ``retry_after`` seconds until it may succeed."""

    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuditFailed(BrokerError):
    """no audit device could record the request; it was not served"""

    status = 503
