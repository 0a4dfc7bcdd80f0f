"""What a broker call can fail with: one ``BrokerError`` family, each ``str(err)`` one line that says
what to do. Its own module so that sensors and templates can catch them without the HTTP client.

The gateway's session states are classified once, here (``session_state``), and both the client
and the auth sensor read that one classification: ``down`` (connection refused, 503),
``unauthenticated`` (401, auth/status says so), ``competing`` (another TWS/gateway session holds the
login) and ``rate_limited`` (429). ``down``/``unauthenticated``/``rate_limited`` may clear by
themselves (the sensor waits; an unauthenticated session is re-authenticated where allowed);
``competing`` needs a person (the sensor fails at once, with the reason on the MLflow run).
"""

from __future__ import annotations

from tradeflow.errors import ServiceError

#: The session states, in the order the sensor reports them.
SESSION_STATES = ("ready", "down", "unauthenticated", "competing", "rate_limited")
#: States a waiting sensor may see clear without a person.
TRANSIENT_STATES = frozenset({"down", "unauthenticated", "rate_limited"})


class BrokerError(ServiceError):
    """A broker call failed; ``str(err)`` is one line that says what to do."""

    state: str | None = None  # a session state when the failure is one (see ``session_state``)


class GatewayDown(BrokerError):
    """The gateway cannot be reached (connection refused / timeout) or answers 503."""

    state = "down"


class NotAuthenticated(BrokerError):
    """The gateway is up but its brokerage session is not logged in."""

    state = "unauthenticated"


class CompetingSession(NotAuthenticated):
    """Another session (TWS, a second gateway) competes for this login: a person must resolve it."""

    state = "competing"


class RateLimited(BrokerError):
    """The gateway answered 429: too many requests. Not a rejection; nothing was placed."""

    state = "rate_limited"


class OrderRejected(BrokerError):
    """The broker refused the order; nothing was placed. Final for that order: never re-sent."""


class QuestionRefused(OrderRejected):
    """A confirmation question the strategy does not accept: the order was declined, not placed."""


class LiveTradingRefused(BrokerError):
    """A live (non-paper) account without the explicit live settings."""


class OutcomeUnknown(BrokerError):
    """The request may have reached the broker (timeout, dropped connection, 5xx)."""


class CancelNotConfirmed(BrokerError):
    """A working order could not be confirmed cancelled: the order that needed it is not sent."""


def session_state(error: BaseException | None) -> str:
    """The one classification of a gateway failure (``ready`` for no error); other errors: ``error``."""
    if error is None:
        return "ready"
    return getattr(error, "state", None) or "error"
