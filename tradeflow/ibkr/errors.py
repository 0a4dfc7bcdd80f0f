"""What a broker call can fail with: one ``BrokerError`` family, each ``str(err)`` one line that says
what to do. Its own module so that sensors and templates can catch them without the HTTP client."""

from __future__ import annotations

from tradeflow.errors import ServiceError


class BrokerError(ServiceError):
    """A broker call failed; ``str(err)`` is one line that says what to do."""


class GatewayDown(BrokerError):
    """The gateway cannot be reached (connection refused / timeout)."""


class NotAuthenticated(BrokerError):
    """The gateway is up but its brokerage session is not logged in."""


class OrderRejected(BrokerError):
    """The broker refused the order; nothing was placed."""


class LiveTradingRefused(BrokerError):
    """A live (non-paper) account without the explicit live settings."""


class OutcomeUnknown(BrokerError):
    """The request may have reached the broker (timeout, dropped connection, 5xx)."""
