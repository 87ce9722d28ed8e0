"""The finance connector against the running stand-in, over real HTTP.

A few edge cases no well-behaved stand-in produces (CSV fields spanning lines, bytes that are
not GBK, a trailer that disagrees with the rows) are served by an in-process transport instead.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import tracemalloc
from collections.abc import Callable, Iterator

import httpx
import pytest

from campushub.connectors.base import (
    AuthError,
    Batch,
    HttpSettings,
    MalformedPageError,
    Record,
    RetryPolicy,
    SourceError,
)
from campushub.connectors.finance import POSTING_LAG, FinanceSource
from campushub.simulators import catalog
from campushub.simulators.finance import CORRUPTIBLE, bill_row, keyset_page, payment_json
from campushub.simulators.malformed import malformed_kind, repeats_previous_page
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.world import Bill, Payment
from tests.conftest import FAST_RETRY, apply_changes, http_settings, set_faults

USER, PASSWORD = "campushub", "dev-finance-secret"


def connector(
    cluster: SimulatorCluster, page_size: int = 97, posting_lag: dt.timedelta = POSTING_LAG, **overrides: object
) -> FinanceSource:
    settings = http_settings(cluster, "finance", **overrides)
    return FinanceSource(settings, USER, PASSWORD, page_size=page_size, posting_lag=posting_lag)


def pull(
    cluster: SimulatorCluster,
    stream: str,
    cursor: str | None = None,
    page_size: int = 97,
    posting_lag: dt.timedelta = POSTING_LAG,
    **overrides: object,
) -> list[Batch]:
    with connector(cluster, page_size, posting_lag, **overrides) as source:
        return list(source.read(stream, cursor))


def records(batches: list[Batch]) -> list[Record]:
    return [record for batch in batches for record in batch.records]


def keys(batches: list[Batch]) -> list[str]:
    return [record.key for record in records(batches) if record.key]


def world_bills(cluster: SimulatorCluster) -> list[Bill]:
    world = cluster.world
    return [bill for index in range(world.student_count) for bill in world.bills_of(index)]


def world_payments(cluster: SimulatorCluster) -> list[Payment]:
    world = cluster.world
    return [payment for index in range(world.student_count) for payment in world.payments_of(index)]


# ---------------------------------------------------------------------------- fee bills
def test_fee_bills_decode_from_gbk_every_bill_exactly_once(simulators: SimulatorCluster) -> None:
    batches = pull(simulators, "fee_bills")
    bills = world_bills(simulators)
    got = records(batches)
    assert [r.key for r in got] == [bill.bill_no for bill in bills]
    # Names exactly as the finance office typed them: stray and full-width spaces, rare characters.
    names = [r.data["姓名"] for r in got]
    assert names == [bill.name_in_finance for bill in bills]
    assert set("".join(names)) & set(catalog.RARE_GBK_CHARS)
    assert any("\u3000" in name for name in names) and any(name.endswith(" ") for name in names)
    assert [r.data for r in got] == [bill_row(bill) for bill in bills]
    assert all(r.ok for r in got)
    assert [len(b.records) for b in batches[:-1]] == [1000] * (len(batches) - 1) and batches[-1].records
    assert batches[-1].cursor and all(b.cursor is None for b in batches[:-1])


def test_unchanged_export_is_not_downloaded_again_and_a_changed_one_is(simulators: SimulatorCluster) -> None:
    first = pull(simulators, "fee_bills")
    etag = first[-1].cursor
    again = pull(simulators, "fee_bills", etag)
    assert [(b.page, b.records, b.cursor) for b in again] == [("not modified", [], etag)]

    changes = apply_changes(simulators, 6, seed=23, kinds=["bill_paid"])
    paid = {c["key"] for c in changes if c["stream"] == "fee_bills"}
    assert len(paid) == 6
    changed = pull(simulators, "fee_bills", etag)
    assert changed[-1].cursor not in (None, etag)
    before = {r.key: r.data for r in records(first)}
    after = {r.key: r.data for r in records(changed)}
    assert {key for key, data in after.items() if data != before[key]} == paid
    # Each bill's fingerprint, what landing compares, changes exactly with the bill.
    digests_before = {r.key: r.digest for r in records(first)}
    assert all(digests_before.values())
    assert {r.key for r in records(changed) if r.digest != digests_before[r.key]} == paid
    for key in paid:
        assert after[key]["缴费状态"] == "已缴清" and before[key]["缴费状态"] != "已缴清"
        assert after[key]["已收金额(分)"] == after[key]["应收金额(分)"]
    assert pull(simulators, "fee_bills", changed[-1].cursor)[0].page == "not modified"


def test_export_is_conditional_and_protected(simulators: SimulatorCluster) -> None:
    url = f"{simulators.urls['finance']}/exports/fee-bills.csv"
    refused = httpx.get(url, auth=(USER, "wrong-password"))
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(url).status_code == 401
    etag = httpx.get(url, auth=(USER, PASSWORD)).headers["ETag"]
    for if_none_match in (etag, f'"other", W/{etag}', "*"):
        response = httpx.get(url, auth=(USER, PASSWORD), headers={"If-None-Match": if_none_match})
        assert (response.status_code, response.content, response.headers["ETag"]) == (304, b"", etag)
    assert httpx.get(url, auth=(USER, PASSWORD), headers={"If-None-Match": '"other"'}).status_code == 200
    paths = httpx.get(f"{simulators.urls['finance']}/openapi.json").json()["paths"]
    assert {"/exports/fee-bills.csv", "/api/payments"} <= set(paths)


# ---------------------------------------------------------------------------- payments
@pytest.mark.parametrize("page_size", [1000, 250])
def test_payments_every_payment_exactly_once(simulators: SimulatorCluster, page_size: int) -> None:
    batches = pull(simulators, "payments", page_size=page_size)
    payments = world_payments(simulators)
    got = records(batches)
    assert [r.key for r in got] == [p.payment_no for p in payments]
    assert [r.data for r in got] == [payment_json(p) for p in payments]
    assert all(r.ok for r in got)
    assert batches[-1].cursor is not None and all(b.cursor is None for b in batches[:-1])


def paid_after(cluster: SimulatorCluster, cursor: str, posting_lag: dt.timedelta = POSTING_LAG) -> list[str]:
    """Ground truth for an incremental pull: every payment paid within the posting lag before
    the cursor or after it, in payment-number order."""
    since = dt.datetime.fromisoformat(cursor) - posting_lag
    return [p.payment_no for p in world_payments(cluster) if p.paid_at > since]


def test_incremental_payments_are_the_new_ones_and_those_the_posting_lag_reaches(
    simulators: SimulatorCluster,
) -> None:
    cursor = pull(simulators, "payments", page_size=1000)[-1].cursor
    changes = apply_changes(simulators, 30, seed=31, kinds=["bill_paid"])
    expected = sorted(c["key"] for c in changes if c["stream"] == "payments")
    assert len(expected) == 30
    trusting = pull(simulators, "payments", cursor, page_size=7, posting_lag=dt.timedelta(0))  # several pages
    assert keys(trusting) == expected
    paid = {p.payment_no: p for p in world_payments(simulators) if p.payment_no in expected}
    assert [r.data for r in records(trusting)] == [payment_json(paid[key]) for key in expected]

    # Reaching back: the payments of the last three days again (landing finds them unchanged).
    batches = pull(simulators, "payments", cursor, page_size=7)
    assert set(expected) <= set(keys(batches)) and keys(batches) == paid_after(simulators, cursor)
    again = pull(simulators, "payments", batches[-1].cursor)
    assert again[-1].cursor >= batches[-1].cursor
    assert keys(again) == paid_after(simulators, batches[-1].cursor) and set(expected) <= set(keys(again))
    assert keys(pull(simulators, "payments", batches[-1].cursor, posting_lag=dt.timedelta(0))) == []


def test_a_transfer_recorded_days_after_it_was_paid_is_still_pulled(simulators: SimulatorCluster) -> None:
    cursor = pull(simulators, "payments", page_size=1000)[-1].cursor
    changes = apply_changes(simulators, 4, seed=37, kinds=["late_payment"])
    late = sorted(c["key"] for c in changes if c["stream"] == "payments")
    assert len(late) == 4
    paid_at = {p.payment_no: p.paid_at for p in world_payments(simulators) if p.payment_no in late}
    # Paid before the cursor was taken, recorded after: a pull that trusts the cursor misses them.
    assert all(at < dt.datetime.fromisoformat(cursor) for at in paid_at.values())
    assert not set(late) & set(keys(pull(simulators, "payments", cursor, posting_lag=dt.timedelta(0))))
    batches = pull(simulators, "payments", cursor)
    assert set(late) <= set(keys(batches)) and keys(batches) == paid_after(simulators, cursor)
    assert [r.data for r in records(batches) if r.key in late] == [
        payment_json(p) for p in world_payments(simulators) if p.payment_no in late
    ]


@pytest.mark.parametrize("cursor", ["not a time", "2026-13-01T00:00:00+08:00"])
def test_a_stored_payments_cursor_that_is_not_a_time_is_named(simulators: SimulatorCluster, cursor: str) -> None:
    with pytest.raises(SourceError) as raised:
        pull(simulators, "payments", cursor)
    assert "finance" in str(raised.value) and f"stored payments cursor {cursor!r} is not a time" in str(raised.value)


def test_a_negative_posting_lag_is_refused(simulators: SimulatorCluster) -> None:
    with pytest.raises(ValueError, match="posting_lag cannot be negative"):
        connector(simulators, posting_lag=-dt.timedelta(hours=1))


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize("stream", ["fee_bills", "payments"])
def test_bad_password_fails_fast(simulators: SimulatorCluster, stream: str) -> None:
    source = FinanceSource(http_settings(simulators, "finance"), USER, "wrong-password")
    started = time.monotonic()
    with pytest.raises(AuthError) as raised, source:
        list(source.read(stream))
    assert time.monotonic() - started < 2
    assert "credentials refused (HTTP 401)" in str(raised.value)
    assert "wrong-password" not in str(raised.value) and "Basic" not in str(raised.value)


# knob -> what a retry it causes says, or None for a knob that must cause none
FAULTS: dict[str, tuple[dict[str, float], Callable[[str, str], bool] | None]] = {
    "5xx": ({"error_rate": 0.3}, lambda stream, reason: reason.startswith("HTTP 50")),
    "429": ({"rate_limit_rate": 0.3, "retry_after": 0}, lambda stream, reason: reason == "HTTP 429"),
    "drop": ({"drop_rate": 0.3}, lambda stream, reason: not reason.startswith(("HTTP", "malformed"))),
    # A cut CSV is a complete HTTP answer: only the trailer check can tell.
    "truncate": (
        {"truncate_rate": 0.3},
        lambda stream, reason: (
            reason.startswith("malformed answer") and (stream == "payments" or "export cut short" in reason)
        ),
    ),
    "latency": ({"latency_ms": 20}, None),
    "all": (
        {"error_rate": 0.1, "rate_limit_rate": 0.1, "drop_rate": 0.1, "truncate_rate": 0.1},
        lambda stream, reason: True,
    ),
}


@pytest.mark.parametrize("stream", ["fee_bills", "payments"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_lose_nothing_and_duplicate_nothing(
    simulators: SimulatorCluster, caplog: pytest.LogCaptureFixture, stream: str, fault: str
) -> None:
    knobs, caused = FAULTS[fault]
    expected = (
        [b.bill_no for b in world_bills(simulators)]
        if stream == "fee_bills"
        else [p.payment_no for p in world_payments(simulators)]
    )
    caplog.set_level(logging.WARNING, logger="campushub.connectors.base")
    set_faults(simulators, "finance", **knobs)
    # One export is one request, which a 30% fault rate often spares: pull until the fault
    # has struck and been recovered from, so the test cannot pass without exercising it.
    for _ in range(25):
        started = time.monotonic()
        batches = pull(simulators, stream, page_size=500)
        assert keys(batches) == expected
        reasons = [
            r.args[1] for r in caplog.records if r.name == "campushub.connectors.base" and isinstance(r.args, tuple)
        ]
        if caused is None:
            assert reasons == [] and time.monotonic() - started >= 0.02
            return
        if any(caused(stream, reason) for reason in reasons):
            return
    pytest.fail(f"{fault} never struck in 25 pulls: {reasons}")


@pytest.mark.parametrize(
    ("stream", "path", "page"),
    [("fee_bills", "/exports/fee-bills.csv", "(export)"), ("payments", "/api/payments", "(first page)")],
)
def test_answer_that_stays_cut_fails_with_source_url_and_page(
    simulators: SimulatorCluster, stream: str, path: str, page: str
) -> None:
    set_faults(simulators, "finance", truncate_rate=1.0)
    give_up_soon = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)
    with pytest.raises(MalformedPageError) as raised:
        pull(simulators, stream, retry=give_up_soon)
    message = str(raised.value)
    assert message.startswith("finance: gave up after 3 attempts")
    assert path in message and message.endswith(page)
    if stream == "fee_bills":
        assert "export cut short" in message


def test_malformed_bills_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate = 0.2
    set_faults(simulators, "finance", malformed_rate=rate)
    got = records(pull(simulators, "fee_bills"))
    bills = world_bills(simulators)
    reasons = {
        "impossible_date": "开票日期: '2025/02/30' is not a valid date (%Y/%m/%d)",
        "missing_key": "missing 学号",
        "unknown_code": "收费项目代码: unknown code 'XX'",
    }
    flagged = 0
    for n, (record, bill) in enumerate(zip(got, bills, strict=True)):
        kind = malformed_kind(simulators.world.seed, "fee_bills", n, rate, CORRUPTIBLE["fee_bills"])
        assert set(record.problems) == ({reasons[kind]} if kind else set()), (n, record.problems)
        assert record.key == bill.bill_no  # the bill number itself is never the broken part
        flagged += bool(kind)
    assert flagged >= 600


def test_malformed_payments_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate, page_size = 0.2, 200
    set_faults(simulators, "finance", malformed_rate=rate)
    got = records(pull(simulators, "payments", page_size=page_size))
    payments = world_payments(simulators)
    seed = simulators.world.seed
    # What the stand-in served: each page, sometimes led by the previous page's last payment.
    served: list[tuple[Payment, bool]] = []
    for start in range(0, len(payments), page_size):
        if start and repeats_previous_page(seed, "payments", keyset_page(payments[start - 1].payment_no), rate):
            served.append((payments[start - 1], True))
        served += [(p, False) for p in payments[start : start + page_size]]
    assert len(got) == len(served) and sum(repeat for _, repeat in served) >= 2
    reasons = {
        "impossible_date": "paidAt: '2026-02-30T10:00:00+08:00' is not a valid date (%Y-%m-%dT%H:%M:%S%z)",
        "missing_key": "missing paymentNo",
        "unknown_code": "channel: unknown code '未知渠道'",
    }
    flagged = 0
    for record, (payment, repeat) in zip(got, served, strict=True):
        kind = malformed_kind(seed, "payments", int(payment.payment_no[1:]), rate, CORRUPTIBLE["payments"])
        expected = {reasons[kind]} if kind else set()
        if repeat and kind != "missing_key":  # a record without its key cannot be recognised again
            expected.add("duplicate: the same record was already sent")
        assert set(record.problems) == expected, (payment.payment_no, record.problems)
        assert record.data["billNo"] == payment.bill_no  # the raw payload travels with the flag
        flagged += bool(expected)
    assert flagged >= 600


# ---------------------------------------------------------------------------- scale
def test_fee_bills_complete_at_medium_scale(medium_simulators: SimulatorCluster) -> None:
    world = medium_simulators.world
    assert world.student_count == world.base_students  # nothing changed here: the base count holds
    settings = http_settings(medium_simulators, "finance")
    with FinanceSource(settings, USER, PASSWORD) as source:
        count, previous = 0, ""
        for batch in source.read("fee_bills"):
            for record in batch.records:
                # Bill numbers ascend through the file: ascending and counted means each exactly once.
                assert record.ok and record.key is not None and record.key > previous
                previous = record.key
            count += len(batch.records)
        assert count == world.base_bill_count > 30_000
        assert [b.page for b in source.read("fee_bills", batch.cursor)] == ["not modified"]


# ---------------------------------------------------------------------------- edge cases
HEADER = "账单号,学号,姓名,收费项目代码,收费项目,学年,应收金额(分),已收金额(分),缴费状态,开票日期,截止日期\r\n"
ROW = "B{no:09d},202401000001,{name},XF,学费,2024-2025,520000,520000,已缴清,2024/08/15,2024/09/30\r\n"


def serve_export(body: bytes) -> tuple[FinanceSource, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=body, headers={"ETag": '"v1"', "Content-Type": "text/csv; charset=GBK"})

    settings = HttpSettings(base_url="http://finance.test", retry=FAST_RETRY)
    return FinanceSource(settings, USER, PASSWORD, transport=httpx.MockTransport(handler)), sent


def test_fields_spanning_lines_and_undecodable_bytes() -> None:
    # A quoted name over two lines; a lead byte with no valid second byte.
    rows = ROW.format(no=1, name='"王\r\n小明"').encode("gbk") + ROW.format(no=2, name="李@").encode("gbk").replace(
        b"@", b"\x81 "
    )
    rows += ROW.replace("\r\n", ",extra\r\n").format(no=3, name="赵犇").encode("gbk")
    source, _ = serve_export(HEADER.encode("gbk") + rows + "#合计,3\r\n".encode("gbk"))
    with source:
        batches = list(source.read("fee_bills"))
    got = records(batches)
    assert [r.data["姓名"] for r in got] == ["王\r\n小明", "李\ufffd ", "赵犇"]
    assert [r.problems for r in got] == [
        (),
        ("bytes that are not valid GBK",),
        ("row has 12 fields where the header has 11",),
    ]
    assert got[2].data["_overflow"] == ["extra"] and batches[-1].cursor == '"v1"'


@pytest.mark.parametrize(
    "trailer", ["#合计,2\r\n", "#合计,1", "", "#合计,x\r\n"], ids=["wrong count", "cut", "none", "garbled"]
)
def test_export_that_disagrees_with_its_trailer_is_refused(trailer: str) -> None:
    body = (HEADER + ROW.format(no=1, name="张三") + trailer).encode("gbk")
    source, sent = serve_export(body)
    with pytest.raises(MalformedPageError) as raised, source:
        list(source.read("fee_bills"))
    assert len(sent) == FAST_RETRY.attempts
    assert "finance: gave up after" in str(raised.value) and "(export)" in str(raised.value)


def test_export_without_its_columns_fails_at_once() -> None:
    source, sent = serve_export(("账单号,姓名\r\nB1,张三\r\n#合计,1\r\n").encode("gbk"))
    with pytest.raises(SourceError, match="export lacks columns 学号, 收费项目代码, 应收金额"), source:
        list(source.read("fee_bills"))
    assert len(sent) == 1


def test_export_is_parsed_in_flat_memory() -> None:
    rows = 20_000
    names = catalog.RARE_GBK_CHARS
    lines = [ROW.format(no=n, name=f"王{names[n % len(names)]}") for n in range(rows)]
    body = (HEADER + "".join(lines) + f"#合计,{rows}\r\n").encode("gbk")
    del lines

    def handler(request: httpx.Request) -> httpx.Response:
        chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))  # as a socket delivers it
        return httpx.Response(200, content=chunks, headers={"ETag": '"big"'})

    settings = HttpSettings(base_url="http://finance.test", retry=FAST_RETRY)
    source = FinanceSource(settings, USER, PASSWORD, batch_size=100, transport=httpx.MockTransport(handler))
    count = 0
    tracemalloc.start()
    try:
        with source:
            for batch in source.read("fee_bills"):
                count += len(batch.records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    # Holding the body, let alone its decoded text, would take more than all of it.
    assert peak < len(body) / 2, f"peak {peak} bytes for a body of {len(body)}"


def test_export_the_parser_reads_differently_from_its_lines_yields_no_cursor() -> None:
    # A lone carriage return ends a CSV record but not a line: header, row and trailer are three
    # lines, the parser reads four records.
    source, sent = serve_export((HEADER + ROW.format(no=1, name="王\r五") + "#合计,1\r\n").encode("gbk"))
    batches: list[Batch] = []
    with pytest.raises(MalformedPageError, match=r"as many rows as it has lines \(4 in 3\)"), source:
        batches.extend(source.read("fee_bills"))
    assert batches == [] and len(sent) == 1


def export_of(count: int, etag: str, changed: frozenset[int] = frozenset()) -> tuple[bytes, str]:
    """An export of `count` bills ("王五" renamed "王六" in the rows `changed`), and its ETag."""
    lines = [ROW.format(no=n, name="王六" if n in changed else "王五") for n in range(count)]
    return (HEADER + "".join(lines) + f"#合计,{count}\r\n").encode("gbk"), etag


def serve_tries(*tries: tuple[bytes, str, int | None, type[Exception] | None]) -> tuple[FinanceSource, list[str]]:
    """A source whose n-th request gets the n-th (body, ETag, where the body stops, how it stops):
    cut short as a complete answer (no error), or by raising the error; the last try repeats."""
    served: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body, etag, stop, error = tries[min(len(served), len(tries) - 1)]
        served.append(etag)

        def chunks() -> Iterator[bytes]:
            end = len(body) if stop is None else stop
            for start in range(0, end, 4096):
                yield body[start : min(start + 4096, end)]
            if error is not None:
                raise error("connection lost")

        return httpx.Response(200, content=chunks(), headers={"ETag": etag})

    settings = HttpSettings(base_url="http://finance.test", retry=FAST_RETRY)
    return FinanceSource(settings, USER, PASSWORD, transport=httpx.MockTransport(handler)), served


@pytest.mark.parametrize("error", [None, httpx.ReadError], ids=["cut short", "connection lost"])
def test_a_try_that_breaks_part_way_resumes_after_the_rows_handed_out(error: type[Exception] | None) -> None:
    body, etag = export_of(2500, '"v1"')
    cut = body.index(ROW.format(no=2100, name="王五").encode("gbk")) + 20  # inside row 2101: two batches out
    source, served = serve_tries((body, etag, cut, error), (body, etag, None, None))
    handed: list[Batch] = []
    with source:
        for batch in source.read("fee_bills"):
            handed.append(batch)
            if len(handed) == 1:
                assert served == ['"v1"']  # parsed and handed out while the file was still arriving
    assert served == ['"v1"', '"v1"']
    assert keys(handed) == [f"B{n:09d}" for n in range(2500)]  # each exactly once
    assert [b.page for b in handed] == ["rows 1-1000", "rows 1001-2000", "rows 2001-2500"]
    assert [b.cursor for b in handed] == [None, None, '"v1"'] and all(r.ok for r in records(handed))


def test_a_retry_that_finds_the_rows_handed_out_changed_fails_the_read() -> None:
    old, new = export_of(2500, '"v1"'), export_of(2500, '"v2"', changed=frozenset({5}))
    cut = old[0].index(ROW.format(no=2100, name="王五").encode("gbk"))
    source, served = serve_tries((*old, cut, None), (*new, None, None))
    handed: list[Batch] = []
    with pytest.raises(SourceError, match="changed between tries, after 2000 rows") as raised, source:
        handed.extend(source.read("fee_bills"))
    # The caller holds the first rows of one version; the rest could only come from another.
    assert not isinstance(raised.value, MalformedPageError) and served == ['"v1"', '"v2"']
    assert len(handed) == 2 and all(b.cursor is None for b in handed)


def test_a_retry_whose_first_rows_are_the_same_carries_on_whatever_its_etag() -> None:
    # A proxy that cuts a body may drop its ETag; a change past the break is read as it now is.
    old, new = export_of(2500, '"v1"'), export_of(2500, '"v2"', changed=frozenset({2400}))
    cut = old[0].index(ROW.format(no=2100, name="王五").encode("gbk"))
    source, served = serve_tries((old[0], "", cut, None), (*new, None, None))
    with source:
        handed = list(source.read("fee_bills"))
    assert served == ["", '"v2"']
    assert keys(handed) == [f"B{n:09d}" for n in range(2500)]
    assert [r.key for r in records(handed) if r.data["姓名"] == "王六"] == ["B000002400"]
    assert handed[-1].cursor == '"v2"' and all(b.cursor is None for b in handed[:-1])


def test_each_break_after_progress_gets_the_retry_policy_afresh() -> None:
    body, etag = export_of(2500, '"v1"')
    at_row = [body.index(ROW.format(no=n, name="王五").encode("gbk")) for n in (1100, 2100)]
    source, served = serve_tries((body, etag, at_row[0], None), (body, etag, at_row[1], None), (body, etag, None, None))
    # Two tries in all: without a fresh start after each batch handed out, the second break would end the read.
    source.settings = HttpSettings(base_url="http://finance.test", retry=RetryPolicy(attempts=2, base_delay=0.001))
    with source:
        handed = list(source.read("fee_bills"))
    assert len(served) == 3 and keys(handed) == [f"B{n:09d}" for n in range(2500)]


def test_an_empty_answer_is_retried() -> None:
    body, etag = export_of(3, '"v1"')
    source, served = serve_tries((b"", etag, None, None), (body, etag, None, None))
    with source:
        handed = list(source.read("fee_bills"))
    assert len(served) == 2 and keys(handed) == ["B000000000", "B000000001", "B000000002"]


def test_not_modified_after_newer_rows_were_handed_out_fails_the_read() -> None:
    body, etag = export_of(2500, '"v2"')
    cut = body.index(ROW.format(no=2100, name="王五").encode("gbk"))
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        if len(sent) > 1:  # a stale replica, say, that still has the version the cursor names
            return httpx.Response(304, headers={"ETag": '"v1"'})
        return httpx.Response(200, content=body[:cut], headers={"ETag": etag})

    settings = HttpSettings(base_url="http://finance.test", retry=FAST_RETRY)
    source = FinanceSource(settings, USER, PASSWORD, transport=httpx.MockTransport(handler))
    handed: list[Batch] = []
    with pytest.raises(SourceError, match="not modified after 2000 newer rows"), source:
        handed.extend(source.read("fee_bills", '"v1"'))
    assert len(sent) == 2 and all(b.cursor is None for b in handed)


def test_a_quote_left_open_fails_at_once_in_bounded_memory() -> None:
    lines = [ROW.format(no=n, name='"王五' if n == 10 else "王五") for n in range(15_000)]
    source, sent = serve_export((HEADER + "".join(lines) + "#合计,15000\r\n").encode("gbk"))
    with pytest.raises(MalformedPageError, match="no record ends within 1048576 bytes"), source:
        list(source.read("fee_bills"))
    assert len(sent) == 1
