"""One careful HTTP GET for the remote sources (WebUI backend cache, IBKR Client Portal).

Retries only what a retry can fix (connection failures and 5xx answers), a few times with
backoff; everything else becomes a one-line ``DataError``. Only method, URL and status are ever
logged: never headers, which may carry session cookies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import requests

from tradeflow.data.base import DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
ATTEMPTS = 3
#: seconds to wait before the 2nd and 3rd attempt
BACKOFF_S: tuple[float, ...] = (0.5, 1.5)


class NotFound(DataError):
    """The service answered 404; the caller turns it into its own message."""


def get_json(
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    verify: bool = True,
    what: str,
) -> Any:
    """GET ``url`` and decode JSON. ``what`` names the request in errors ("AAPL backend cache").

    Raises ``NotFound`` on 404 and ``DataError`` on any other failure.
    """
    own = session is None
    http = requests.Session() if own else session
    try:
        response = _get_with_retry(http, url, params=params, verify=verify, what=what)
    finally:
        if own:
            http.close()
    if response.status_code == 404:
        raise NotFound(f"{what}: 404 from {url}")
    if response.status_code >= 400:
        raise DataError(f"{what}: HTTP {response.status_code} from {url}: {_detail(response)}")
    try:
        return response.json()
    except ValueError:
        raise DataError(f"{what}: {url} did not answer JSON (content-type "
                        f"{response.headers.get('content-type', 'unknown')})") from None


def _get_with_retry(
    http: requests.Session, url: str, *, params: Mapping[str, str] | None, verify: bool, what: str
) -> requests.Response:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = http.get(url, params=params, timeout=TIMEOUT_S, verify=verify)
        except requests.exceptions.SSLError:
            raise DataError(f"{what}: TLS certificate check failed for {url} (for the IBKR gateway's "
                            "self-signed certificate set IBKR_VERIFY_TLS=false)") from None
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            problem = f"cannot connect ({type(exc).__name__})"
        except requests.Timeout:
            raise DataError(f"{what}: no answer from {url} within {TIMEOUT_S:g} s") from None
        except requests.RequestException as exc:
            raise DataError(f"{what}: request to {url} failed ({type(exc).__name__})") from None
        else:
            if response.status_code < 500:
                return response
            problem = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt == ATTEMPTS:
                raise DataError(f"{what}: {url} answered {problem} ({ATTEMPTS} attempts)")
        if attempt == ATTEMPTS:
            raise DataError(f"{what}: {url}: {problem} ({ATTEMPTS} attempts)")
        log.warning("GET %s: %s; retrying (attempt %d of %d)", url, problem, attempt + 1, ATTEMPTS)
        time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
    raise AssertionError("unreachable")


def _detail(response: requests.Response) -> str:
    """The service's own explanation, on one short line."""
    try:
        body = response.json()
        text = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        text = response.text
    return " ".join(str(text).split())[:200] or "(empty body)"
