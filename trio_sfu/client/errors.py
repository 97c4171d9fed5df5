"""What our client raises when it cannot do what was asked."""

from __future__ import annotations


class ClientError(Exception):
    """The client could not do what was asked (join refused, publish denied or timed out)."""


class JoinError(ClientError):
    """The server refused or never completed the join."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


__all__ = ["ClientError", "JoinError"]
