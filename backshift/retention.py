"""How retention decides: which backups a policy keeps, and why.

Pure: backup records in, one decision per backup (keep or remove, with the
rules that kept it) out.  Nothing here reads a file or the clock; expiry.py
does the I/O and the removing.

The calendar rules follow restic's ``forget``: backups are grouped by
(host, subset) and each group is judged on its own; the rules are OR-ed
(a backup any rule keeps is kept); ``--keep-daily N`` walks the group
newest first and keeps the newest backup of each of the N most recent days
that have a backup (a day without one is not counted); hours, ISO weeks,
months and years alike, all in UTC.  When a calendar rule finds fewer
buckets than N, the oldest backup of the group is kept as well, so a
young history is not thinned below what the rule promises.
``--keep-within D`` keeps backups started within D of the group's newest.

Only *countable* backups (complete, with at least one file saved) are
counted or kept by the rules: a failed, empty or unfinished backup never
takes the place of a real one.  ``--max-age`` is separate: a backup of any
state younger than it is never removed.  An unfinished backup whose writer
still shows signs of life is kept whatever the rules say.
"""

import datetime
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from .catalog import STATE_FAILED, BackupRecord

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90d, 12w, 1y, 3600s, 0s, 36h or 15m."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError("%r is not a duration (a number and one of s, m, h, d, w, y: "
                         "90d, 12w, 1y, 3600s)" % text)
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def _iso_week(moment: datetime.datetime) -> str:
    year, week, _day = moment.isocalendar()
    return "%04d-W%02d" % (year, week)


# Calendar rules: name and the UTC bucket a start time falls in.
BUCKETS: Tuple[Tuple[str, Callable[[datetime.datetime], str]], ...] = (
    ("hourly", lambda moment: moment.strftime("%Y-%m-%d %H:00")),
    ("daily", lambda moment: moment.strftime("%Y-%m-%d")),
    ("weekly", _iso_week),
    ("monthly", lambda moment: moment.strftime("%Y-%m")),
    ("yearly", lambda moment: moment.strftime("%Y")),
)
BUCKET_UNITS = {"hourly": "hours", "daily": "days", "weekly": "weeks", "monthly": "months",
                "yearly": "years"}


class Policy(NamedTuple):
    """What to keep; a count of 0 (or None) means the rule was not asked for."""
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Optional[float] = None   # seconds before the group's newest backup
    max_age: Optional[float] = None  # seconds before now

    def counts(self) -> Dict[str, int]:
        return {"last": self.last, "hourly": self.hourly, "daily": self.daily,
                "weekly": self.weekly, "monthly": self.monthly, "yearly": self.yearly}

    def has_rule(self) -> bool:
        """Does the policy keep anything?  Without a rule expiry would remove everything."""
        return (any(count > 0 for count in self.counts().values())
                or self.within is not None or bool(self.max_age))


class Decision(NamedTuple):
    record: BackupRecord
    keep: bool
    reasons: Tuple[str, ...]  # the rules that kept it, or why it goes


def countable(record: BackupRecord) -> bool:
    """May this backup count as one of those a rule keeps?"""
    return record.complete and record.files > 0


def _age_reference(record: BackupRecord) -> float:
    return (record.finished or record.started).timestamp()


def decide(records: Sequence[BackupRecord], now: float, policy: Policy,
           live: Set[str]) -> List[Decision]:
    """One decision per record, in the order given.

    ``now`` is the time --max-age is measured from; ``live`` holds the ids
    of unfinished backups whose writers still show signs of life.
    """
    reasons: Dict[str, List[str]] = {record.backup_id: [] for record in records}
    groups: Dict[Tuple[str, str], List[BackupRecord]] = {}
    for record in records:
        if countable(record):
            groups.setdefault((record.hostname, record.subset), []).append(record)
    for group in groups.values():
        group.sort(key=lambda record: record.started, reverse=True)  # newest first
        for backup_id, reason in _group_keeps(group, policy):
            reasons[backup_id].append(reason)
    decisions = []
    for record in records:
        kept = reasons[record.backup_id]
        if policy.max_age and now - _age_reference(record) < policy.max_age:
            kept.append("younger than --max-age")
        if not record.complete and record.state != STATE_FAILED and record.backup_id in live:
            kept.append("unfinished, its writer is alive")
        if kept:
            decisions.append(Decision(record, True, tuple(kept)))
        else:
            decisions.append(Decision(record, False, (_why_not(record),)))
    return decisions


def _why_not(record: BackupRecord) -> str:
    if record.state == STATE_FAILED:
        return "failed: nothing was saved"
    if not record.complete:
        return "unfinished, its writer is gone"
    if record.files == 0:
        return "empty: no file saved"
    return "no rule keeps it"


def _group_keeps(group: Sequence[BackupRecord], policy: Policy) -> List[Tuple[str, str]]:
    """(backup id, reason) for every keep of one group's countable backups, newest first."""
    keeps: List[Tuple[str, str]] = []
    for record in group[:policy.last]:
        keeps.append((record.backup_id, "keep-last %d" % policy.last))
    if policy.within is not None:
        newest = group[0].started.timestamp()
        for record in group:
            if newest - record.started.timestamp() <= policy.within:
                keeps.append((record.backup_id, "keep-within"))
    counts = policy.counts()
    for name, bucket_of in BUCKETS:
        wanted = counts[name]
        if wanted <= 0:
            continue
        found: List[str] = []
        for record in group:
            if len(found) == wanted:
                break
            bucket = bucket_of(record.started.astimezone(datetime.timezone.utc))
            if not found or found[-1] != bucket:
                found.append(bucket)
                keeps.append((record.backup_id, "keep-%s %s" % (name, bucket)))
        if len(found) < wanted:
            keeps.append((group[-1].backup_id, "oldest (keep-%s %d found %d %s)"
                          % (name, wanted, len(found), BUCKET_UNITS[name])))
    return keeps
