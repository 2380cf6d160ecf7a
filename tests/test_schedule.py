"""Schedules: the seed's forms and plain cron, with fire times computed from given moments (no sleeping)."""

from datetime import UTC, datetime, timedelta

import pytest

from jobgraph.schedule import CATCH_UP_COUNT_LIMIT, parse_schedule

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
    ("0 0 30 2 *", "'0 0 30 2 \\*' never fires: its days of the month do not exist in its months"),
    ("0 0 31 4,6,9,11 * Europe/Paris", "never fires"),
    ("0 0 * * * *", "has 6 cron fields: jobgraph takes five .* a seconds or years field is not supported"),
    ("0 0 9 * * MON", "has 6 cron fields"),
    ("0 0 1 1 * 2030", "has 6 cron fields"),
    ("0 0 1 1 * 2030 UTC", "has 6 cron fields"),
    ("USING CRON 0 0 9 * * MON UTC", "has 6 cron fields"),
    ("*/5 * * * * * 2027", "has 7 cron fields"),
    ("@reboot", "'@reboot' is not a time"),
    ("@daily", "cron nicknames such as '@daily' are not supported: write it as '0 0 \\* \\* \\*'"),
    ("0 0 L * *", "the day of month field 'L' uses 'L' \\(last\\), a croniter extension jobgraph does not take"),
    ("0 0 15W * *", "the day of month field '15W' uses 'W' \\(nearest weekday\\)"),
    ("0 0 * * 1#2", "the day of week field '1#2' uses '#' \\(nth weekday\\)"),
    ("0 0 * * 5L", "the day of week field '5L' uses 'L'"),
    ("0 0 ? * *", "uses '\\?' \\(no specific value\\)"),
    ("H * * * *", "the minute field 'H' uses 'H' \\(hashed\\)"),
    ("R 0 * * *", "the minute field 'R' uses 'R' \\(random\\)"),
    ("0 0 1 foo *", "the month field 'foo' is not standard cron"),
])
def test_bad_schedules_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


@pytest.mark.parametrize("text", ["0 0 29 2 *", "0 0 30 2 MON", "0 9 * * thu,wed EST", "0 0 1 jul,apr,mar *",
                                  "0 0 * * 7", "0 0 1-31/2 * *", "USING CRON 0 9 * * MON-FRI Europe/Paris"])
def test_standard_cron_that_fires_is_taken(text: str) -> None:
    assert parse_schedule(text).cron is not None


def test_a_leap_day_schedule_is_found_across_the_non_leap_year_2100() -> None:
    schedule = parse_schedule("0 0 29 2 *")
    assert schedule.next_after(datetime(2096, 3, 1, tzinfo=UTC)) == datetime(2104, 2, 29, tzinfo=UTC)


def test_a_summer_time_zone_fires_at_its_local_time_all_year() -> None:
    schedule = parse_schedule("USING CRON 0 2 * * * Europe/Paris")
    assert schedule.next_after(datetime(2026, 1, 15, 12, tzinfo=UTC)) == datetime(2026, 1, 16, 1, tzinfo=UTC)
    assert schedule.next_after(datetime(2026, 7, 15, 12, tzinfo=UTC)) == datetime(2026, 7, 16, 0, tzinfo=UTC)


def test_the_last_due_fire_is_computed_directly() -> None:
    interval, cron = parse_schedule("59 MINUTE"), parse_schedule("*/5 * * * *")
    anchor = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert interval.last_at_or_before(T0, anchor) == datetime(2026, 11, 25, 8, 59, tzinfo=UTC)
    assert interval.last_at_or_before(anchor - timedelta(seconds=1), anchor) is None
    ten_years = anchor + timedelta(days=3650)
    assert interval.last_at_or_before(ten_years, anchor) == anchor + timedelta(minutes=3650 * 1440 // 59 * 59)
    assert cron.last_at_or_before(T0) == datetime(2026, 11, 25, 9, 15, tzinfo=UTC)
    assert cron.last_at_or_before(datetime(2026, 11, 25, 9, 20, tzinfo=UTC)) == datetime(2026, 11, 25, 9, 20,
                                                                                             tzinfo=UTC)


def test_missed_fires_are_counted_exactly_for_intervals_and_up_to_a_limit_for_cron() -> None:
    start = datetime(2026, 11, 25, 9, 1, tzinfo=UTC)
    assert parse_schedule("1 MINUTE").count_between(start, start + timedelta(days=200), start) == 288000
    assert parse_schedule("*/5 * * * *").count_between(start.replace(minute=5), start.replace(hour=10, minute=0)) == 11
    assert parse_schedule("* * * * *").count_between(start, start + timedelta(days=200)) == CATCH_UP_COUNT_LIMIT
