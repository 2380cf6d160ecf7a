"""Schedules: the seed's forms and plain cron, with fire times computed from given moments (no sleeping)."""

from datetime import UTC, datetime

import pytest

from jobgraph.schedule import parse_schedule

T0 = datetime(2026, 11, 25, 9, 15, 30, tzinfo=UTC)


def test_the_seeds_interval_counts_from_its_anchor() -> None:
    schedule = parse_schedule("59 MINUTE")
    assert schedule.minutes == 59
    anchor = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert schedule.next_after(T0, anchor) == datetime(2026, 11, 25, 9, 58, tzinfo=UTC)
    assert schedule.next_after(datetime(2026, 11, 25, 9, 58, tzinfo=UTC), anchor) == datetime(
        2026, 11, 25, 10, 57, tzinfo=UTC)


def test_using_cron_with_a_time_zone_fires_in_that_zone() -> None:
    schedule = parse_schedule("USING CRON 0 9 * * MON America/Los_Angeles")
    assert schedule.next_after(T0) == datetime(2026, 11, 30, 17, 0, tzinfo=UTC)  # 09:00 PST


def test_plain_cron_defaults_to_utc_and_takes_an_optional_zone() -> None:
    assert parse_schedule("*/5 * * * *").next_after(T0) == datetime(2026, 11, 25, 9, 20, tzinfo=UTC)
    assert parse_schedule("0 12 * * * Europe/Paris").next_after(T0) == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "message"), [
    ("0 MINUTE", "an interval schedule takes 1 to 11520 minutes"),
    ("every hour", "is not a schedule"),
    ("61 * * * *", "is not a valid cron expression"),
    ("USING CRON 0 9 * * MON", "USING CRON takes five cron fields and a time zone"),
    ("0 9 * * MON Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_schedules_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)
