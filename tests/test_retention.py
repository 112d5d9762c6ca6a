"""The retention policy alone (retention.py): records in, decisions out."""

import datetime

import pytest

from backshift.catalog import STATE_COMPLETE, STATE_FAILED, STATE_UNFINISHED, BackupRecord
from backshift.retention import Policy, decide, parse_duration

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 6, 1, tzinfo=UTC).timestamp()


def rec(when: str, host: str = "h", subset: str = "s", state: str = STATE_COMPLETE,
        files: int = 5) -> BackupRecord:
    started = datetime.datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    record = BackupRecord("%s-%s-%s" % (when, host, subset), host, subset, started)
    record.state = state
    record.files = files
    if state != STATE_UNFINISHED:
        record.finished = started + datetime.timedelta(minutes=10)
    return record


def kept(records, policy, live=(), now=NOW):
    return [d.record.backup_id[:16] for d in decide(records, now, policy, set(live)) if d.keep]


def reasons(records, policy, live=(), now=NOW):
    return {d.record.backup_id[:16]: d.reasons for d in decide(records, now, policy, set(live))}


def test_keep_daily_counts_only_days_with_backups_and_keeps_each_days_newest():
    records = [rec(when) for when in ("2025-01-01 08:00", "2025-01-02 08:00", "2025-01-02 20:00",
                                      "2025-01-05 09:00", "2025-01-09 01:00", "2025-01-09 23:00")]
    # Days 9, 5 and 2 have backups; the gaps (3, 4, 6-8) are not counted.
    assert kept(records, Policy(daily=3)) == ["2025-01-02 20:00", "2025-01-05 09:00",
                                              "2025-01-09 23:00"]
    assert kept(records, Policy(daily=1)) == ["2025-01-09 23:00"]


def test_fewer_buckets_than_asked_keeps_the_oldest_too():
    records = [rec(when) for when in ("2025-01-01 08:00", "2025-01-01 20:00", "2025-01-02 08:00",
                                      "2025-01-03 08:00")]
    # Three days for keep-daily 7: each day's newest, and the oldest backup.
    assert kept(records, Policy(daily=7)) == [r.backup_id[:16] for r in records]
    why = reasons(records, Policy(daily=7))
    assert why["2025-01-01 08:00"] == ("oldest (keep-daily 7 found 3 days)",)
    assert why["2025-01-01 20:00"] == ("keep-daily 2025-01-01",)
    # Enough days: no extra oldest.
    assert kept(records, Policy(daily=3)) == ["2025-01-01 20:00", "2025-01-02 08:00",
                                              "2025-01-03 08:00"]


def test_weekly_buckets_are_iso_weeks_across_a_year_boundary():
    # Mon 2024-12-30 .. Sun 2025-01-05 is ISO week 2025-W01; Mon 2025-01-06 starts W02.
    records = [rec(when) for when in ("2024-12-29 12:00", "2024-12-30 12:00", "2025-01-05 12:00",
                                      "2025-01-06 12:00")]
    assert kept(records, Policy(weekly=3)) == ["2024-12-29 12:00", "2025-01-05 12:00",
                                               "2025-01-06 12:00"]
    why = reasons(records, Policy(weekly=3))
    assert why["2025-01-05 12:00"] == ("keep-weekly 2025-W01",)
    assert why["2024-12-29 12:00"] == ("keep-weekly 2024-W52",)
    assert why["2024-12-30 12:00"] == ("no rule keeps it",)


def test_monthly_yearly_and_hourly_buckets():
    records = [rec(when) for when in ("2023-06-01 00:00", "2024-12-31 23:30", "2025-01-01 00:30",
                                      "2025-01-31 10:00", "2025-02-01 10:10", "2025-02-01 10:50")]
    assert kept(records, Policy(yearly=2)) == ["2024-12-31 23:30", "2025-02-01 10:50"]
    assert kept(records, Policy(monthly=3)) == ["2024-12-31 23:30", "2025-01-31 10:00",
                                                "2025-02-01 10:50"]
    assert kept(records, Policy(hourly=2)) == ["2025-01-31 10:00", "2025-02-01 10:50"]
    # Five years asked, three found: the oldest is kept as well.
    assert kept(records, Policy(yearly=5)) == ["2023-06-01 00:00", "2024-12-31 23:30",
                                               "2025-02-01 10:50"]


def test_rules_are_ored_and_each_reason_is_given():
    records = [rec(when) for when in ("2025-01-01 08:00", "2025-01-02 08:00", "2025-01-03 08:00",
                                      "2025-02-10 08:00")]
    policy = Policy(last=1, daily=2, monthly=2)
    assert kept(records, policy) == ["2025-01-03 08:00", "2025-02-10 08:00"]
    why = reasons(records, policy)
    assert why["2025-02-10 08:00"] == ("keep-last 1", "keep-daily 2025-02-10",
                                      "keep-monthly 2025-02")
    assert why["2025-01-03 08:00"] == ("keep-daily 2025-01-03", "keep-monthly 2025-01")


def test_keep_within_is_measured_from_the_groups_newest_backup():
    records = [rec(when) for when in ("2025-01-01 08:00", "2025-01-08 08:00", "2025-01-10 08:00")]
    # Years after the last backup, the last ten days of backups are still kept.
    assert kept(records, Policy(within=parse_duration("7d"))) == ["2025-01-08 08:00",
                                                                  "2025-01-10 08:00"]


def test_groups_are_judged_apart():
    records = [rec("2025-01-0%d 08:00" % day, host, subset)
               for day in (1, 2, 3) for host in ("a", "b") for subset in ("root", "home")]
    decisions = decide(records, NOW, Policy(last=2), set())
    for host in ("a", "b"):
        for subset in ("root", "home"):
            mine = [d for d in decisions if d.record.hostname == host
                    and d.record.subset == subset]
            assert [d.keep for d in mine] == [False, True, True]


def test_empty_failed_and_unfinished_backups_never_count():
    real = rec("2025-01-01 08:00")
    empty = rec("2025-01-02 08:00", files=0)
    failed = rec("2025-01-03 08:00", state=STATE_FAILED, files=0)
    dead = rec("2025-01-04 08:00", state=STATE_UNFINISHED)
    records = [real, empty, failed, dead]
    why = reasons(records, Policy(last=1))
    assert why == {"2025-01-01 08:00": ("keep-last 1",),
                   "2025-01-02 08:00": ("empty: no file saved",),
                   "2025-01-03 08:00": ("failed: nothing was saved",),
                   "2025-01-04 08:00": ("unfinished, its writer is gone",)}
    assert [d.keep for d in decide(records, NOW, Policy(last=1), set())] == \
        [True, False, False, False]
    # The same holds for every calendar rule: the real backup is the one kept.
    assert kept(records, Policy(daily=1)) == ["2025-01-01 08:00"]
    # A writer still alive keeps its unfinished backup.
    assert kept(records, Policy(last=1), live=[dead.backup_id]) == ["2025-01-01 08:00",
                                                                  "2025-01-04 08:00"]


def test_max_age_protects_young_backups_of_every_state():
    now = datetime.datetime(2025, 1, 4, 12, 0, tzinfo=UTC).timestamp()
    records = [rec("2025-01-01 08:00"), rec("2025-01-02 08:00"),
               rec("2025-01-04 08:00", files=0), rec("2025-01-04 09:00", state=STATE_UNFINISHED)]
    policy = Policy(last=1, max_age=parse_duration("1d"))
    assert kept(records, policy, now=now) == ["2025-01-02 08:00", "2025-01-04 08:00",
                                              "2025-01-04 09:00"]
    assert reasons(records, policy, now=now)["2025-01-04 08:00"] == ("younger than --max-age",)
    # Alone, --max-age is a rule: older than it goes.
    assert kept(records, Policy(max_age=parse_duration("3d")), now=now) == [
        "2025-01-02 08:00", "2025-01-04 08:00", "2025-01-04 09:00"]


def test_a_policy_without_a_rule_is_told_apart():
    assert not Policy().has_rule()
    assert not Policy(max_age=0.0).has_rule()
    for policy in (Policy(last=1), Policy(daily=7), Policy(yearly=1), Policy(within=0.0),
                   Policy(max_age=86400.0)):
        assert policy.has_rule()


@pytest.mark.parametrize("policy", [Policy(last=3), Policy(daily=2, weekly=2),
                                    Policy(monthly=1, yearly=1), Policy(hourly=4)])
def test_the_newest_real_backup_of_each_group_is_always_kept(policy):
    records = [rec("2025-0%d-1%d 0%d:00" % (month, day, hour), host)
               for month in (1, 2) for day in (1, 5) for hour in (1, 7) for host in ("a", "b")]
    records.append(rec("2025-03-01 00:00", "a", files=0))
    keep = {d.record.backup_id for d in decide(records, NOW, policy, set()) if d.keep}
    assert records[-2].backup_id in keep and records[-3].backup_id in keep
    assert records[-1].backup_id not in keep
