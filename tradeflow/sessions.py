"""A symbol's trading session as the person set it on its WebUI link, and whether "now" is inside it.

The WebUI stores, per link, ``timezone`` (IANA), ``session_start`` / ``session_end`` ("HH:MM", local
to that timezone) and ``allow_weekend``. Scheduled batch runs skip a symbol outside its session
(``force`` overrides, see ``tradeflow.orchestration.resolve_targets``). A session whose end is
before its start runs overnight (22:00-06:00). ``None`` for a field means "no constraint". Holidays
are not known to the WebUI and are not guessed here.

Standard library only (``zoneinfo``): the DAG file imports the orchestration module at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tradeflow.errors import InputError

__all__ = ["Session", "SessionError"]

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class SessionError(InputError):
    """A link's session fields cannot be read; the message names the field and the value."""


@dataclass(frozen=True)
class Session:
    timezone: str | None = None
    start: time | None = None
    end: time | None = None
    allow_weekend: bool = True

    @classmethod
    def from_link(cls, link: Mapping[str, Any], *, where: str = "link") -> Session:
        """Read and validate the session fields of a WebUI link (wrong types name the field)."""
        tz = link.get("timezone")
        if tz is not None:
            if not isinstance(tz, str) or not tz.strip():
                raise SessionError(f"{where}.timezone must be an IANA name like 'America/New_York', got {tz!r}")
            try:
                ZoneInfo(tz.strip())
            except (ZoneInfoNotFoundError, ValueError):
                raise SessionError(f"{where}.timezone {tz!r} is not a known IANA time zone") from None
            tz = tz.strip()
        start, end = (_hhmm(link.get(key), f"{where}.{key}") for key in ("session_start", "session_end"))
        if (start is None) != (end is None):
            raise SessionError(f"{where}: session_start and session_end must both be set or both be empty"
                               f" (got {link.get('session_start')!r}, {link.get('session_end')!r})")
        weekend = link.get("allow_weekend", True)
        if weekend is None:
            weekend = True
        if not isinstance(weekend, bool):
            raise SessionError(f"{where}.allow_weekend must be true or false, got {weekend!r}")
        return cls(timezone=tz, start=start, end=end, allow_weekend=weekend)

    def outside(self, now: datetime) -> str | None:
        """None when ``now`` (aware) is inside the session, else why not, on one line."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        local = now.astimezone(ZoneInfo(self.timezone)) if self.timezone else now.astimezone(UTC)
        zone = self.timezone or "UTC"
        stamp = f"{local:%a %H:%M} {zone}"
        if not self.allow_weekend and local.weekday() >= 5:
            return f"it is the weekend ({stamp}) and the link does not allow weekends"
        if self.start is None or self.end is None:
            return None
        clock = local.time().replace(second=0, microsecond=0)
        if self.start <= self.end:
            inside = self.start <= clock < self.end
        else:  # overnight
            inside = clock >= self.start or clock < self.end
        if inside:
            return None
        return f"{stamp} is outside its session {self.start:%H:%M}-{self.end:%H:%M}"

    def describe(self) -> str:
        hours = f"{self.start:%H:%M}-{self.end:%H:%M}" if self.start and self.end else "any time"
        return f"{hours} {self.timezone or 'UTC'}{'' if self.allow_weekend else ', weekdays'}"


def _hhmm(value: Any, where: str) -> time | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not (match := _HHMM.match(value.strip())):
        raise SessionError(f"{where} must be 'HH:MM' (00:00-23:59), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))
