"""Schedules as the seed writes them (`59 MINUTE`, `USING CRON 0 9 * * MON America/Los_Angeles`) and plain
cron (`*/5 * * * *`, optionally followed by a time zone), and when each fires next.

Cron expressions are croniter's; time zones are the IANA names zoneinfo knows. An interval
schedule fires every N minutes counted from a start time (Snowflake counts from when the task was
resumed), so `next_after` takes that anchor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_INTERVAL = re.compile(r"(\d+)\s*(MINUTE|MINUTES|M)", re.IGNORECASE)
_USING_CRON = re.compile(r"USING\s+CRON\s+(.+)", re.IGNORECASE)
MAX_INTERVAL_MINUTES = 11520
"""Snowflake's largest interval schedule (8 days)."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either every `minutes`, or a cron expression in a time zone."""

    text: str
    minutes: int | None = None
    cron: str | None = None
    zone: str = "UTC"

    def next_after(self, moment: datetime, anchor: datetime | None = None) -> datetime:
        """The first fire time strictly after `moment` (aware, UTC)."""
        if self.minutes is not None:
            step = timedelta(minutes=self.minutes)
            start = anchor or moment
            if moment < start:
                return start.astimezone(UTC)
            periods = int((moment - start) / step) + 1
            return (start + periods * step).astimezone(UTC)
        assert self.cron is not None
        local = moment.astimezone(ZoneInfo(self.zone))
        fire: datetime = croniter(self.cron, local).get_next(datetime)
        return fire.astimezone(UTC)


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule string; ValueError says what is wrong in words a person can act on."""
    stripped = " ".join(text.split())
    interval = _INTERVAL.fullmatch(stripped)
    if interval:
        minutes = int(interval[1])
        if not 1 <= minutes <= MAX_INTERVAL_MINUTES:
            raise ValueError(f"an interval schedule takes 1 to {MAX_INTERVAL_MINUTES} minutes, got {minutes}")
        return Schedule(text, minutes=minutes)
    using = _USING_CRON.fullmatch(stripped)
    fields = (using[1] if using else stripped).split(" ")
    zone = "UTC"
    if len(fields) == 6:
        zone = fields.pop()
    elif using:
        raise ValueError(f"{text!r}: USING CRON takes five cron fields and a time zone, "
                         "e.g. 'USING CRON 0 9 * * MON America/Los_Angeles'")
    if len(fields) != 5:
        raise ValueError(f"{text!r} is not a schedule: use 'N MINUTE', 'USING CRON <cron> <time zone>' "
                         "or a five-field cron expression such as '*/5 * * * *'")
    cron = " ".join(fields)
    if not croniter.is_valid(cron):
        raise ValueError(f"{cron!r} is not a valid cron expression")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r} (use an IANA name such as UTC or Europe/Paris)") from None
    return Schedule(text, cron=cron, zone=zone)
