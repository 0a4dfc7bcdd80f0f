"""The user-error base class: what an entry point reports as one line instead of a traceback.

An error a person can act on (bad input, a service that is down, a stage that failed for a stated
reason) derives from ``UserError``; its message is already the one line they need. Anything else
is a bug: the entry point keeps its traceback (and still marks the run FAILED), so a ``KeyError``
deep in a step is never flattened into one unexplained line.

Each class also derives from the builtin it replaced (``ValueError``, ``LookupError``,
``RuntimeError``), so code that catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure whose ``str()`` is one actionable line (no traceback shown).

    Its text passes the redaction boundary when it is made: a URL's ``user:password@``, a
    configured secret or a key-shaped string never reaches the line a user (or a tag) sees.

    ``retryable`` False: trying again cannot help (a bad configuration, a missing package), so
    the stage run is tagged ``tradeflow.failure_permanent`` and Airflow fails the task at once."""

    retryable: bool = True

    def __init__(self, *args: object) -> None:
        from tradeflow.redaction import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class InputError(UserError, ValueError):
    """A value given to tradeflow (a parameter, a URI, a payload field) is unusable."""


class ConfigError(InputError):
    """A configuration value is invalid. ``str(err)`` is one line naming the parameter."""

    retryable = False


class NotFoundError(UserError, LookupError):
    """Something the input names does not exist (a run, an artifact, a model)."""


class ServiceError(UserError, RuntimeError):
    """A service tradeflow depends on (tracking store, WebUI, broker) could not be used."""


class TrackingStoreUnavailable(ServiceError):
    """The MLflow tracking store did not answer (down, unreachable, or refused the request)."""


class StepError(UserError, RuntimeError):
    """A step or a run it started ended without a result, for the reason its message states."""


def tracking_lookup_error(exc: BaseException, what: str, uri: str) -> UserError:
    """Name why ``what`` (e.g. ``review_run_id 'x'``) could not be read from the store at ``uri``:
    not found there, or the store itself is down (never both as "is not a run")."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode

    from tradeflow.redaction import redact, strip_credentials

    not_found = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}
    uri = strip_credentials(uri)  # a tracking password never reaches an error line
    if isinstance(exc, MlflowException) and exc.error_code in not_found:
        return NotFoundError(f"{what} is not a run in {uri}")
    reason = redact(" ".join(str(exc).split()))[:300] or exc.__class__.__name__
    return TrackingStoreUnavailable(f"tracking store {uri} could not be read for {what}: {reason}")


__all__ = ["ConfigError", "InputError", "NotFoundError", "ServiceError", "StepError", "TrackingStoreUnavailable", "UserError",
           "tracking_lookup_error"]
