"""Schedules as the seed writes them (`59 MINUTE`, `USING CRON 0 9 * * MON America/Los_Angeles`) and plain
cron (`*/5 * * * *`, optionally followed by a time zone), and when each fires next.

Cron expressions are the standard five fields (numbers, names, `*`, ranges, lists, steps), computed
by croniter; its extensions (seconds or years fields, `L`, `W`, `#`, `?`, `H`, `R`, `@daily`,
`@reboot`) are refused, and so is an expression that never fires (`0 0 30 2 *`). Time zones are the
IANA names zoneinfo knows. An interval schedule fires every N minutes counted from a start time
(Snowflake counts from when the task was resumed), so the fire times take that anchor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:  # croniter (and dateutil under it) loads only for a cron schedule: an interval needs neither
    from croniter import croniter

_INTERVAL = re.compile(r"(\d+)\s*(MINUTE|MINUTES|M)", re.IGNORECASE)
_USING_CRON = re.compile(r"USING\s+CRON\s+(.+)", re.IGNORECASE)
MAX_INTERVAL_MINUTES = 11520
"""Snowflake's largest interval schedule (8 days)."""

_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_NAMES = {3: "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec", 4: "sun|mon|tue|wed|thu|fri|sat"}
_CRON_LIKE = re.compile(rf"(?:[\d*?/,#LWHR-]|{_NAMES[3]}|{_NAMES[4]})+", re.IGNORECASE)
"""A token that is a cron field (of any dialect, names included), not a time zone."""
_EXTENSIONS = {"L": "'L' (last)", "W": "'W' (nearest weekday)", "#": "'#' (nth weekday)",
               "?": "'?' (no specific value)", "H": "'H' (hashed)", "R": "'R' (random)"}
_NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
              "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
NEVER_FIRES_WINDOW_YEARS = 9
"""Every five-field cron that fires at all fires within 9 years of 2000-01-01 (29 February included)."""
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
CATCH_UP_COUNT_LIMIT = 1000
"""Missed cron fire times are counted up to this many (intervals are counted exactly)."""


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
            periods = (moment - start) // step + 1
            return (start + periods * step).astimezone(UTC)
        fire: datetime = self._cron(moment).get_next(datetime)
        return fire.astimezone(UTC)

    def last_at_or_before(self, moment: datetime, anchor: datetime | None = None) -> datetime | None:
        """The latest fire time at or before `moment`, computed directly (no stepping); None if none yet."""
        if self.minutes is not None:
            step = timedelta(minutes=self.minutes)
            start = anchor or moment
            if moment < start:
                return None
            return (start + (moment - start) // step * step).astimezone(UTC)
        earlier: datetime = self._cron(moment).get_prev(datetime)
        following = self.next_after(earlier)
        return following if following <= moment else earlier.astimezone(UTC)

    def count_between(self, first: datetime, last: datetime, anchor: datetime | None = None) -> int:
        """How many fire times lie in [first, last): exact for intervals, at most CATCH_UP_COUNT_LIMIT for cron."""
        if last <= first:
            return 0
        if self.minutes is not None:
            return -((first - last) // timedelta(minutes=self.minutes))
        count, moment = 0, self._cron(first - timedelta(microseconds=1))
        while count < CATCH_UP_COUNT_LIMIT and moment.get_next(datetime) < last:
            count += 1
        return count

    def _cron(self, moment: datetime) -> croniter:
        from croniter import croniter

        assert self.cron is not None
        return croniter(self.cron, moment.astimezone(ZoneInfo(self.zone)))


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
    if fields[0].startswith("@"):
        raise ValueError(_nickname_problem(fields[0]))
    zone = "UTC"
    if len(fields) > 5 and not _CRON_LIKE.fullmatch(fields[-1]):
        zone = fields.pop()
    elif using:
        raise ValueError(f"{text!r}: USING CRON takes five cron fields and a time zone, "
                         "e.g. 'USING CRON 0 9 * * MON America/Los_Angeles'")
    if len(fields) > 5 and all(_CRON_LIKE.fullmatch(each) for each in fields):
        raise ValueError(f"{text!r} has {len(fields)} cron fields: jobgraph takes five (minute hour day-of-month "
                         "month day-of-week); a seconds or years field is not supported")
    if len(fields) != 5:
        raise ValueError(f"{text!r} is not a schedule: use 'N MINUTE', 'USING CRON <cron> <time zone>' "
                         "or a five-field cron expression such as '*/5 * * * *'")
    from croniter import CroniterBadDateError, croniter

    for position, value in enumerate(fields):
        _check_field(value, position)
    cron = " ".join(fields)
    if not croniter.is_valid(cron):
        raise ValueError(f"{cron!r} is not a valid cron expression")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r} (use an IANA name such as UTC or Europe/Paris)") from None
    schedule = Schedule(text, cron=cron, zone=zone)
    try:
        croniter(cron, _REFERENCE, max_years_between_matches=NEVER_FIRES_WINDOW_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{cron!r} never fires: its days of the month do not exist in its months "
                         "(such as 30 February or 31 April)") from None
    return schedule


def _nickname_problem(word: str) -> str:
    if word.lower() == "@reboot":
        return "'@reboot' is not a time: a schedule fires at times (use 'N MINUTE' or a five-field cron expression)"
    equivalent = _NICKNAMES.get(word.lower())
    if equivalent:
        return f"cron nicknames such as {word!r} are not supported: write it as {equivalent!r}"
    return f"{word!r} is not a schedule: use 'N MINUTE' or a five-field cron expression such as '*/5 * * * *'"


def _check_field(value: str, position: int) -> None:
    """Refuse what is not standard cron in one field, naming the field and the extension."""
    extension = next((name for mark, name in _EXTENSIONS.items() if mark in value.upper()), None)
    names = _NAMES.get(position)
    if extension is not None and not (names and re.fullmatch(rf"(?:{names}|[\d*/,-])+", value, re.IGNORECASE)):
        raise ValueError(f"the {_FIELDS[position]} field {value!r} uses {extension}, a croniter extension "
                         "jobgraph does not take: use numbers, names, '*', ranges a-b, lists a,b and steps /n")
    value_pattern = rf"(?:\d+|{names})" if names else r"\d+"
    item = rf"(?:\*|{value_pattern}(?:-{value_pattern})?)(?:/\d+)?"
    if not re.fullmatch(rf"{item}(?:,{item})*", value, re.IGNORECASE):
        raise ValueError(f"the {_FIELDS[position]} field {value!r} is not standard cron: use numbers, "
                         "names, '*', ranges a-b, lists a,b and steps /n")
