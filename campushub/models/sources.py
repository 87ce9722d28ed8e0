"""The source systems as the hub schedules and judges them, declared once.

The pipeline reads this to build its landing assets and freshness policies; the API reads it
to tell stewards (and flag served values) when a source has gone stale.
"""

from __future__ import annotations

import datetime as dt

# source -> streams, in the order a full sync needs them
STREAMS: dict[str, tuple[str, ...]] = {
    "academic": ("colleges", "majors", "classes", "courses", "students", "grades"),
    "hr": ("departments", "positions", "titles", "staff"),
    "finance": ("fee_bills", "payments"),
    "card": ("card_accounts", "card_transactions"),
}
# How stale each source may get before its data is no longer current.
FRESHNESS: dict[str, dt.timedelta] = {
    "academic": dt.timedelta(hours=1),
    "hr": dt.timedelta(hours=1),
    "finance": dt.timedelta(hours=2),  # a daily export with intraday payments
    "card": dt.timedelta(minutes=45),
}
# What each system is called on the service hall's badges.
LABELS: dict[str, str] = {"academic": "教务", "hr": "人事", "finance": "财务", "card": "一卡通"}
# The department that owns each system's data: where a correction of its values is routed.
OWNERS: dict[str, str] = {"academic": "教务处", "hr": "人事处", "finance": "财务处", "card": "后勤管理处"}
