"""The WebUI client's errors (own module: the client and its artifact endpoints both raise them)."""

from __future__ import annotations

from tradeflow.errors import ServiceError


class WebUIError(ServiceError):
    """The backend could not be used; ``str(err)`` is one line naming the URL and the endpoint."""

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.endpoint = endpoint
        self.status = status


class WebUINotFoundError(WebUIError):
    """A 404 where the caller needs the thing to exist (e.g. no cached market data)."""


__all__ = ["WebUIError", "WebUINotFoundError"]
