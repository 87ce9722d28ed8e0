"""财务 — the finance system as such systems are typically exposed: HTTP Basic auth, a nightly
fee-bill export as a GBK-encoded CSV file with Chinese headers (money in integer fen), and a
JSON payments API with keyset pagination (`after` the last payment number seen)."""

from __future__ import annotations

import csv
import datetime as dt
import email.utils
import hashlib
import hmac
import io
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from campushub.simulators.faults import FaultSettings
from campushub.simulators.malformed import Corruptible, maybe_corrupt, repeats_previous_page
from campushub.simulators.service import json_response, service_app
from campushub.simulators.settings import SimulatorSettings
from campushub.simulators.world import CST, SNAPSHOT, Bill, Payment, World

FEE_BILLS_PATH = "/exports/fee-bills.csv"
PAYMENTS_PATH = "/api/payments"
MAX_LIMIT = 1000
ROWS_PER_CHUNK = 1000
ENCODING = "gbk"
REALM = "finance"

FEE_BILL_COLUMNS = (
    "账单号",
    "学号",
    "姓名",
    "收费项目代码",
    "收费项目",
    "学年",
    "应收金额(分)",
    "已收金额(分)",
    "缴费状态",
    "开票日期",
    "截止日期",
)
TRAILER = "#合计"  # the last line, "#合计,<rows>": lets a client tell a complete file from a cut one

CORRUPTIBLE = {
    "fee_bills": Corruptible(key="学号", date=("开票日期", "2025/02/30"), code=("收费项目代码", "XX")),
    "payments": Corruptible(
        key="paymentNo", date=("paidAt", "2026-02-30T10:00:00+08:00"), code=("channel", "未知渠道")
    ),
}


def bill_status(bill: Bill) -> str:
    if bill.paid_fen >= bill.amount_fen:
        return "已缴清"
    return "部分缴费" if bill.paid_fen else "未缴费"


def bill_row(bill: Bill) -> dict[str, str]:
    return {
        "账单号": bill.bill_no,
        "学号": bill.student_no,
        "姓名": bill.name_in_finance,
        "收费项目代码": bill.item_code,
        "收费项目": bill.item_name,
        "学年": f"{bill.academic_year}-{bill.academic_year + 1}",
        "应收金额(分)": str(bill.amount_fen),
        "已收金额(分)": str(bill.paid_fen),
        "缴费状态": bill_status(bill),
        "开票日期": _slashed(bill.issued),
        "截止日期": _slashed(bill.due),
    }


def _slashed(day: dt.date) -> str:
    # strftime costs more than the rest of a row: this runs for every bill of every export.
    return f"{day.year}/{day.month:02d}/{day.day:02d}"


def payment_json(payment: Payment) -> dict[str, Any]:
    return {
        "paymentNo": payment.payment_no,
        "billNo": payment.bill_no,
        "studentNo": payment.student_no,
        "amountFen": str(payment.amount_fen),  # money as a string of digits: no float on the wire
        "channel": payment.channel,
        "paidAt": payment.paid_at.isoformat(timespec="seconds"),
        "status": "SUCCESS",
    }


def payment_serial(payment_no: str) -> int:
    """The number in a payment number: what malformed-record rolls are keyed by."""
    return int(payment_no[1:])


def keyset_page(after: str) -> int:
    """A number naming "the page after `after`" for the page-boundary repeat roll.

    Keyset pages have no numbers; the resume key identifies the page just as well, and keeps
    the roll a pure function of the request. Offset by 2 because page 1 never repeats.
    """
    return payment_serial(after) + 2


def student_index_of(payment_no: str) -> int:
    # P{student index:07d}{bill slot:02d}{n}: the index says where a scan resumes.
    return int(payment_no[1:8])


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # A Chinese system reads an instant without an offset as Beijing time.
    return value.replace(tzinfo=CST) if value is not None and value.tzinfo is None else value


After = Annotated[
    str | None,
    Query(pattern=r"^P\d{10}$", description="resume after this payment number (the previous page's `last`)"),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
PaidSince = Annotated[dt.datetime | None, Query(description="only payments made after this instant (ISO 8601)")]
PaidUntil = Annotated[
    dt.datetime | None,
    Query(description="only payments made up to this instant; pass the first page's server_time to page a stable set"),
]
IfNoneMatch = Annotated[str | None, Header()]
Credentials = Annotated[HTTPBasicCredentials, Depends(HTTPBasic(realm=REALM))]


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or a list of tags, compared weakly."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in (tag.removeprefix("W/") for tag in tags)


def create_app(world: World, settings: SimulatorSettings, faults: FaultSettings, fault_seed: int = 0) -> FastAPI:
    app = service_app(
        "财务系统 Finance (stand-in)",
        "Fee bills as a daily GBK CSV export, and payments. Authenticate with HTTP Basic.",
        world,
        faults,
        fault_seed,
    )

    def require_basic(credentials: Credentials) -> None:
        user_ok = hmac.compare_digest(credentials.username.encode(), settings.finance_user.encode())
        password_ok = hmac.compare_digest(credentials.password.encode(), settings.finance_password.encode())
        if not (user_ok and password_ok):
            raise HTTPException(401, "用户名或密码错误", headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})

    auth = [Depends(require_basic)]

    def export_state() -> tuple[int, str, dt.datetime]:
        """(students, ETag, last modified) of the export, read consistently with the changes."""
        with world.changes.lock:
            count, version = world.student_count, world.changes.fee_bills_version
            modified = next((c.at for c in reversed(world.changes.log) if c.stream == "fee_bills"), SNAPSHOT)
        # A strong ETag promises identical bytes, so the malformed knob, which changes them, is part of it.
        digest = hashlib.sha256(f"{world.seed}:{count}:{version}:{faults.malformed_rate!r}".encode()).hexdigest()
        return count, f'"{digest[:32]}"', modified

    def csv_chunks(students: int) -> Iterator[bytes]:
        """The export, 1000 rows at a time, so memory stays flat however many bills there are.

        Rows are generated while the file is sent: a change applied meanwhile may show up in it,
        never the other way round, so the ETag (taken before the first row) is never ahead of
        the content and a client cannot miss a change by trusting it.
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, FEE_BILL_COLUMNS, restval="")
        writer.writeheader()
        rows = 0
        plan, rate = CORRUPTIBLE["fee_bills"], faults.malformed_rate
        for index in range(students):
            for bill in world.bills_of(index):
                writer.writerow(maybe_corrupt(bill_row(bill), world.seed, "fee_bills", rows, rate, plan))
                rows += 1
                if rows % ROWS_PER_CHUNK == 0:
                    yield _drain(buffer)
        buffer.write(f"{TRAILER},{rows}\r\n")
        yield _drain(buffer)

    @app.get(
        FEE_BILLS_PATH,
        dependencies=auth,
        summary="收费账单导出 fee bills (daily CSV export, GBK)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}, 304: {"description": "not modified since the ETag"}},
    )
    def fee_bills(if_none_match: IfNoneMatch = None) -> Response:
        students, etag, modified = export_state()
        headers = {
            "ETag": etag,
            "Last-Modified": email.utils.format_datetime(modified.astimezone(dt.UTC), usegmt=True),
            "X-Export-Date": modified.isoformat(timespec="seconds"),
        }
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        headers["Content-Disposition"] = f'attachment; filename="fee-bills-{modified:%Y%m%d}.csv"'
        return StreamingResponse(csv_chunks(students), media_type="text/csv; charset=GBK", headers=headers)

    def passes(payment: Payment, since: dt.datetime | None, until: dt.datetime) -> bool:
        return (since is None or payment.paid_at > since) and payment.paid_at <= until

    def candidates(after: str | None, since: dt.datetime | None, until: dt.datetime) -> Iterator[Payment]:
        """Payments in payment-number order after `after`, filtered by (since, until]."""
        if since is not None and since >= SNAPSHOT:
            # Every base payment predates the snapshot: only the overlay's can match.
            with world.changes.lock:
                extra = [p for ps in world.changes.extra_payments.values() for p in ps]
            chosen: Iterable[Payment] = sorted(extra, key=lambda p: p.payment_no)
        else:
            start = 0 if after is None else student_index_of(after)
            chosen = (p for index in range(start, world.student_count) for p in world.payments_of(index))
        for payment in chosen:
            if (after is None or payment.payment_no > after) and passes(payment, since, until):
                yield payment

    def resumed_from(after: str, since: dt.datetime | None, until: dt.datetime) -> list[Payment]:
        """The payment `after` names, to serve again at the head of a page (a page-shift repeat)."""
        found = [p for p in world.payments_of(student_index_of(after)) if p.payment_no == after]
        return [p for p in found if passes(p, since, until)]

    @app.get(PAYMENTS_PATH, dependencies=auth, summary="缴费流水 payments (keyset pagination)")
    def payments(
        after: After = None, limit: Limit = 100, paid_since: PaidSince = None, paid_until: PaidUntil = None
    ) -> Response:
        since = _aware(paid_since)
        until = _aware(paid_until)
        if until is None:
            # Read under the changes' lock, a microsecond back: every payment recorded so far is
            # stamped before it (a burst waits, holding the lock, until its stamps are past) and
            # every later one after it, so it can serve as the next sync's `paid_since` without
            # losing or repeating anything — but for a late-posted payment (`late_payment`),
            # stamped with the day it was paid, which a pull finds only by reaching back. Sent
            # with all its digits for the same reason.
            with world.changes.lock:
                until = dt.datetime.now(CST) - dt.timedelta(microseconds=1)
        page: list[Payment] = []
        has_more = False
        for payment in candidates(after, since, until):
            if len(page) == limit:
                has_more = True
                break
            page.append(payment)
        last = page[-1].payment_no if page else after
        rate = faults.malformed_rate
        if after is not None and repeats_previous_page(world.seed, "payments", keyset_page(after), rate):
            page = resumed_from(after, since, until) + page
        plan = CORRUPTIBLE["payments"]
        rows = [
            maybe_corrupt(payment_json(p), world.seed, "payments", payment_serial(p.payment_no), rate, plan)
            for p in page
        ]
        return json_response(
            {"data": rows, "has_more": has_more, "last": last, "server_time": until.isoformat(timespec="microseconds")}
        )

    return app


def _drain(buffer: io.StringIO) -> bytes:
    # Names outside GBK become '?', as vendor exports do; the connector cannot get them back.
    chunk = buffer.getvalue().encode(ENCODING, errors="replace")
    buffer.seek(0)
    buffer.truncate()
    return chunk
