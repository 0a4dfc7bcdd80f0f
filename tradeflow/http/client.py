"""The project's one HTTP layer: every client (the WebUI backend, its market-data cache, the IBKR
Client Portal gateway) sends through ``HttpClient.send``.

Why a layer of our own on top of ``requests``:

- **One retry policy** (``RetryPolicy``, ``is_transient``). Transient, retried with exponential
  backoff: connection errors, timeouts, 502/503/504, 429 *with* ``Retry-After`` (honoured up to a
  bound), and a bare 500 that does not say why. Not transient, answered to the caller at once: every
  other 4xx, and a 500 whose body names the payload (the WebUI's ``"'foo' is an invalid keyword
  argument for Artifact"``): sending the same body again only repeats it.
- **A total deadline per request.** ``requests`` timeouts are per socket read, so a server sending a
  byte a second holds a client forever; a watchdog (``tradeflow.http.watchdog``) shuts the socket
  down when the deadline passes
  (not retried: a trickling server trickles again). ``TRADEFLOW_HTTP_DEADLINE_S`` sets it.
- **A response size cap**, checked against ``Content-Length`` and while reading: a hostile or broken
  server cannot make a client read 50 MB into memory.
- **Lost answers are named.** ``HttpError.maybe_applied`` says whether a failed request may still have
  been carried out by the server (a read timeout, a connection dropped after sending, a 502/504 from a
  proxy), so a non-idempotent caller knows to look before it sends again.

Only the method, URL path and status are ever logged: never headers (tokens, session cookies).
``tenacity``/``urllib3.Retry`` were considered: neither knows "a 500 that names the payload", a
total deadline or a size cap, and the look-up-before-re-POST hook needs the loop in our hands.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import requests

from tradeflow.errors import ServiceError
from tradeflow.http.watchdog import Watch, deadline, watch_session, watched_session

log = logging.getLogger(__name__)

__all__ = ["HttpClient", "HttpError", "Limits", "Reply", "RetryPolicy", "is_transient", "payload_error"]

#: Statuses a retry can fix (429 only with Retry-After, see ``is_transient``).
TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})
#: Statuses after which the server (or the one behind a proxy) may still have applied the request.
AMBIGUOUS_STATUSES: Final = frozenset({500, 502, 504})
_PAYLOAD_500: Final = re.compile(r"invalid keyword argument|unexpected keyword|not json serializable|"
                                 r"validation error|violates .* constraint|invalid input syntax", re.I)


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries, how long between them, and how long a ``Retry-After`` may ask us to wait."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("attempts must be >= 1, backoff_s and max_retry_after_s >= 0")

    def wait(self, attempt: int) -> float:
        """Seconds to sleep after failed try number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def deadline_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    """``TRADEFLOW_HTTP_DEADLINE_S`` when it is set (validated by the one settings model,
    ``tradeflow.settings``: a bad value is a one-line ``ConfigError``), else ``default``: each
    client keeps its own deadline until a person sets one for all."""
    import os

    from tradeflow import settings

    env = os.environ if environ is None else environ
    if not (env.get(settings.env_name("http_deadline_s")) or "").strip():
        return default
    return settings.current(env).http_deadline_s


@dataclass(frozen=True)
class Limits:
    """Per-request bounds: connect and per-read timeouts, a total deadline, a response size cap."""

    connect_s: float = 3.05
    read_s: float = 15.0
    deadline_s: float = 30.0
    max_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.connect_s, self.read_s, self.deadline_s) <= 0 or self.max_bytes < 1:
            raise ValueError("timeouts and the deadline must be > 0 and max_bytes >= 1")


@dataclass(frozen=True)
class Reply:
    """A complete answer (status, headers, body read within the limits)."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The decoded body; ``ValueError`` when it is not JSON (the caller names the endpoint)."""
        return json.loads(self.content)

    def detail(self) -> str:
        """The service's own explanation on one short line (FastAPI's ``detail`` when present)."""
        try:
            body = self.json()
        except ValueError:
            return snippet(self.text) or f"HTTP {self.status} with no body"
        return snippet(json.dumps(body.get("detail", body) if isinstance(body, dict) else body))


@dataclass
class HttpError(ServiceError):
    """A request that did not get a usable answer. ``kind`` is a short phrase ("unreachable",
    "timed out", "answered 503", "answered too much", "deadline exceeded", "TLS check failed"),
    ``reason`` the innermost cause on one line, ``tries`` how many were made."""

    kind: str
    reason: str
    tries: int = 1
    status: int | None = None
    maybe_applied: bool = False
    transient: bool = True
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.kind}: {self.reason}")

    def __str__(self) -> str:  # the message as made: redacted by ``UserError`` (no URL password, no key)
        return str(self.args[0]) if self.args else f"{self.kind}: {self.reason}"


def snippet(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def payload_error(reply: Reply, sent: Mapping[str, Any] | None) -> bool:
    """True when a 500's body names the payload: a known "bad input" phrase, or one of the keys sent."""
    detail = reply.detail()
    if _PAYLOAD_500.search(detail):
        return True
    return bool(sent) and any(f"'{key}'" in detail or f'"{key}"' in detail for key in sent)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), or None when absent or unreadable."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def is_transient(reply: Reply, sent: Mapping[str, Any] | None = None) -> bool:
    """The project's definition of an answer worth retrying (see the module docstring)."""
    if reply.status in TRANSIENT_STATUSES:
        return True
    if reply.status == 429:
        return retry_after_s(reply.headers) is not None
    if reply.status == 500:
        return not payload_error(reply, sent)
    return False


# --- the client -----------------------------------------------------------------------------------


class HttpClient:
    """Sends requests with the project's retry policy, deadline and size cap.

    ``send`` returns every non-transient answer (2xx, 3xx, 4xx, a payload 500) as a ``Reply`` for the
    caller to judge, and raises ``HttpError`` when no usable answer came within the tries.
    """

    def __init__(self, *, policy: RetryPolicy | None = None, limits: Limits | None = None,
                 session: requests.Session | None = None, verify: bool = True,
                 headers: Mapping[str, str] | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.limits = limits or Limits()
        self.verify = verify
        # a caller's session gets the watchdog too
        self.session = watch_session(session) if session is not None else watched_session()
        if headers:
            self.session.headers.update(headers)

    def close(self) -> None:
        self.session.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: str | bytes | None = None,
        attempts: int | None = None,
        before_retry: Callable[[HttpError], Any | None] | None = None,
        label: str = "",
    ) -> Reply | Any:
        """One request under the policy. ``before_retry(last_error)`` (for non-idempotent requests)
        runs before every retry; a non-None result ends the loop and is returned instead of a Reply.
        """
        label = label or f"{method} {url}"
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False)
        sent = json_body if isinstance(json_body, Mapping) else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        tries = attempts or self.policy.attempts
        error: HttpError | None = None
        for attempt in range(1, tries + 1):
            if error is not None and before_retry is not None and (found := before_retry(error)) is not None:
                log.info("%s: found the result of an earlier attempt; not sending it again", label)
                return found
            try:
                reply = self._once(method, url, params=params, data=data, headers=headers)
            except HttpError as exc:
                error = exc
                if not exc.transient:
                    raise _with_tries(exc, attempt) from None
                wait = self.policy.wait(attempt)
            else:
                if not is_transient(reply, sent):
                    return reply
                after = retry_after_s(reply.headers)
                error = HttpError(f"answered {reply.status}", reply.detail(), status=reply.status,
                                  maybe_applied=reply.status in AMBIGUOUS_STATUSES, retry_after=after)
                if after is not None and after > self.policy.max_retry_after_s:
                    error.transient = False
                    raise _with_tries(error, attempt) from None
                wait = max(self.policy.wait(attempt), after or 0.0)
            if attempt < tries:
                log.warning("%s %s (%s); try %d/%d in %.1f s", label, error.kind, error.reason, attempt + 1,
                            tries, wait)
                time.sleep(wait)
        assert error is not None
        raise _with_tries(error, tries)

    def _once(self, method: str, url: str, *, params: Mapping[str, str] | None, data: str | bytes | None,
              headers: Mapping[str, str] | None) -> Reply:
        limits = self.limits
        with deadline(limits.deadline_s) as watch:
            return self._watched(method, url, params=params, data=data, headers=headers, watch=watch)

    def _watched(self, method: str, url: str, *, params: Mapping[str, str] | None, data: str | bytes | None,
                 headers: Mapping[str, str] | None, watch: Watch) -> Reply:
        limits = self.limits
        started = time.monotonic()
        response: requests.Response | None = None
        try:
            response = self.session.request(method, url, params=params, data=data, headers=headers,
                                            timeout=(limits.connect_s, limits.read_s), verify=self.verify,
                                            allow_redirects=False, stream=True)
            content = _read_capped(response, limits.max_bytes)
            return Reply(response.status_code, dict(response.headers), content, url)
        except HttpError:
            raise
        except requests.exceptions.SSLError:
            raise HttpError("TLS check failed", f"certificate check failed for {url}", transient=False) from None
        except requests.ConnectTimeout as exc:
            raise HttpError("unreachable", f"ConnectTimeout {_reason(exc)}") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            if watch.fired:
                # not retried: a server that trickles for the whole deadline will do it again
                raise HttpError("deadline exceeded", f"no complete answer within {limits.deadline_s:g} s "
                                f"(the server was still sending after {time.monotonic() - started:.0f} s)",
                                maybe_applied=True, transient=False) from None
            if isinstance(exc, requests.Timeout):
                raise HttpError("timed out", f"ReadTimeout {_reason(exc)}", maybe_applied=True) from None
            refused = isinstance(exc, requests.ConnectionError) and _refused(exc)
            raise HttpError("unreachable", f"{type(exc).__name__} {_reason(exc)}",
                            maybe_applied=not refused) from None
        except requests.RequestException as exc:
            raise HttpError("failed", f"{type(exc).__name__} {_reason(exc)}", transient=False) from None
        finally:
            if response is not None:
                response.close()


def _read_capped(response: requests.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HttpError("answered too much", f"Content-Length {int(declared):,} bytes is over the "
                        f"{max_bytes:,}-byte cap", status=response.status_code, transient=False)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise HttpError("answered too much", f"more than the {max_bytes:,}-byte cap",
                            status=response.status_code, transient=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _with_tries(error: HttpError, tries: int) -> HttpError:
    error.tries = tries
    return error


def _refused(exc: BaseException) -> bool:
    """A connection that was never made (the request cannot have been applied)."""
    text = repr(exc)
    return any(mark in text for mark in ("Connection refused", "NewConnectionError", "Name or service not known",
                                         "nodename nor servname", "No route to host"))


def _reason(exc: BaseException) -> str:
    """The innermost cause (``[Errno 111] Connection refused``), not urllib3's nested reprs."""
    seen: BaseException = exc
    for _ in range(8):
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in seen.args if isinstance(arg, BaseException)), None)
        if inner is None:
            break
        seen = inner
    text = str(seen)
    if "Failed to establish a new connection: " in text:
        text = text.split("Failed to establish a new connection: ", 1)[1]
    return snippet(text or type(seen).__name__)
