"""What the finance office promises about its records, which both its stand-in and its
connector must agree on."""

from __future__ import annotations

import datetime as dt

# A bank transfer is recorded once it settles: up to three days after the payment.
POSTING_LAG = dt.timedelta(days=3)
