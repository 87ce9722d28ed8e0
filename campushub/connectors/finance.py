"""Connector for 财务, the finance system: HTTP Basic, a GBK CSV export, keyset-paged payments.

The fee-bill export is one file of every bill, however many there are. It is fetched with a
conditional GET (the stored cursor is its ETag) and decoded and parsed as it arrives, a batch
at a time, while the source is still writing the rest: memory stays flat whatever the file's
size. Its trailer line vouches for the whole file before the last batch hands over the ETag; a
file cut short in transit is retried from where it broke, never taken as complete.

Payments can only be asked for by when they were paid, and a bank transfer is recorded days
after it was paid. An incremental pull therefore reaches back `posting_lag` before its cursor:
the payments it reads again are unchanged and land nothing, and the late ones are not lost.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Any

import httpx

from campushub.connectors.base import (
    Batch,
    HttpSettings,
    HttpSource,
    MalformedPageError,
    PageRequest,
    PageWindow,
    Record,
    Retryable,
    SourceError,
    StreamSpec,
)
from campushub.connectors.settings import http_settings_from_env, require_env
from campushub.reference.finance import POSTING_LAG
from campushub.reference.source_codes import BILL_STATUS

FEE_BILLS_PATH = "/exports/fee-bills.csv"
PAYMENTS_PATH = "/api/payments"
ENCODING = "gbk"
TRAILER = "#合计"  # the export's last line: "#合计,<number of rows>"
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S%z"
SLASHED = "%Y/%m/%d"
LONGEST_RECORD = 1024 * 1024  # bytes without a record's end: an unbalanced quote, not a bill
OVERFLOW = "_overflow"  # where values beyond the header's columns are kept, so nothing is dropped


STREAMS = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "fee_bills",
            key=("账单号",),
            required=("账单号", "学号", "收费项目代码", "应收金额(分)"),
            dates={"开票日期": SLASHED, "截止日期": SLASHED},
            codes={"收费项目代码": frozenset({"XF", "ZSF"}), "缴费状态": frozenset(BILL_STATUS)},
            integers=("应收金额(分)", "已收金额(分)"),
        ),
        StreamSpec(
            "payments",
            key=("paymentNo",),
            required=("paymentNo", "billNo", "amountFen", "paidAt"),
            dates={"paidAt": ISO_SECONDS},
            codes={"channel": frozenset({"微信", "支付宝", "银行卡", "现金"})},
            integers=("amountFen",),
        ),
    )
}


class _RecordBlocks:
    """The export's bytes, as they arrive, cut into blocks that end where a CSV record ends:
    each block parses on its own, while the source is still writing the rest.

    A line break inside a quoted field does not end a record. Working on the bytes is safe: a
    GBK character's second byte is 0x40 or above, so neither a line feed nor a double quote can
    hide inside one.
    """

    def __init__(self) -> None:
        self._quoted = False
        self._pending = bytearray()  # bytes after the last record end

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """(the complete records now available, and how many line breaks end records in them)."""
        if not self._quoted and b'"' not in chunk:
            cut = chunk.rfind(b"\n") + 1
            ends = chunk.count(b"\n")
        else:
            cut, ends, offset = 0, 0, 0
            lines = chunk.split(b"\n")
            for line in lines[:-1]:
                offset += len(line) + 1
                self._quoted ^= line.count(b'"') % 2 == 1
                if not self._quoted:
                    cut, ends = offset, ends + 1
            self._quoted ^= lines[-1].count(b'"') % 2 == 1
        block = bytes(self._pending) + chunk[:cut] if ends else b""
        self._pending[:] = chunk[cut:] if ends else self._pending + chunk
        if len(self._pending) > LONGEST_RECORD:
            raise ValueError(f"no record ends within {LONGEST_RECORD} bytes (a quote left open?)")
        return block, ends

    @property
    def complete(self) -> bool:
        """Whether the bytes so far end with a complete record, as an export that arrived whole does."""
        return not self._pending


class _ExportRecords:
    """The export's CSV records (header and trailer included), each block of bytes decoded and
    parsed as it arrives; a row at a time, so memory holds a block's text and no more.

    Raises Retryable when the file stops inside a record (cut short in transit: worth another
    try), and MalformedPageError when the parser and the line breaks disagree (a lone carriage
    return ends a CSV record but not a line: the same bytes would parse the same way again).
    """

    def __init__(self, chunks: Iterator[bytes], source: str, url: str) -> None:
        self._chunks = chunks
        self._source, self._url = source, url
        self.count = 0
        self.undecodable = False  # some bytes so far were not GBK: look for U+FFFD in every row

    def __iter__(self) -> Iterator[list[str]]:
        blocks = _RecordBlocks()
        source, url = self._source, self._url
        for chunk in self._chunks:
            try:
                block, ends = blocks.feed(chunk)
            except ValueError as exc:  # the same bytes would fail the same way again
                raise MalformedPageError(source, str(exc), url=url, page=f"after record {self.count}") from exc
            if not ends:
                continue
            text, bad_bytes = _decoded(block)
            self.undecodable |= bad_bytes
            before = self.count
            for row in csv.reader(io.StringIO(text, newline="")):
                self.count += 1
                yield row
            if self.count - before != ends:
                raise MalformedPageError(
                    source,
                    f"export does not parse into as many rows as it has lines ({self.count - before} in {ends})",
                    url=url,
                    page=f"records {before + 1}-{self.count}",
                )
        if not blocks.complete:
            raise Retryable.malformed(ValueError("export cut short: it does not end with a complete line"))


def _decoded(block: bytes) -> tuple[str, bool]:
    """A block as text, and whether some of its bytes are not GBK (those become U+FFFD and flag
    their record instead of failing the sync). Strict first: in C, and the usual file is clean."""
    try:
        return block.decode(ENCODING), False
    except UnicodeDecodeError:
        return block.decode(ENCODING, errors="replace"), True


def _trailer_count(row: list[str] | None) -> int:
    """The row count the trailer promises; ValueError if `row` is not the trailer."""
    if row is None or len(row) != 2 or row[0] != TRAILER or not row[1].isdigit():
        raise ValueError(f"export cut short: its last line is not the {TRAILER} trailer")
    return int(row[1])


@dataclass
class _HandedOut:
    """How many rows the tries of one export have handed out, and a fingerprint of those rows
    (of their own fingerprints, in order). A retry carries on after them once its first rows
    are found to be the same rows; if they changed, the read fails, since the caller holds the
    first rows of one version and the rest could only come from another. (ETags cannot decide
    this: a proxy that cuts a body short may drop the ETag with it.)"""

    rows: int = 0
    _fingerprint: Any = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))

    def add(self, digests: list[str]) -> None:
        self.rows += len(digests)
        self._fingerprint.update("".join(digests).encode())

    def skip(self, rows: Iterator[list[str]], digest: Callable[[list[str]], str], url: str) -> None:
        """Read past the rows handed out before, which must be the same again."""
        if not self.rows:
            return
        again = hashlib.md5(usedforsecurity=False)
        for row in islice(rows, self.rows):
            again.update(digest(row).encode())
        if again.digest() != self._fingerprint.digest():
            raise SourceError(
                "finance",
                f"the export changed between tries, after {self.rows} rows of it had been read; "
                "the next sync reads it again",
                url=url,
                page="export",
            )


def _row_problems(values: list[str], width: int, check_bytes: bool) -> list[str]:
    problems = []
    if len(values) != width:
        problems.append(f"row has {len(values)} fields where the header has {width}")
    if check_bytes and any("\ufffd" in value for value in values):
        problems.append(f"bytes that are not valid {ENCODING.upper()}")
    return problems


def _rows(
    header: list[str], batch: list[list[str]], check_bytes: bool
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """The batch's rows as dicts by column name, and the problems of the rows that have any
    (by position): a wrong number of fields, bytes that are not GBK."""
    width = len(header)
    if not check_bytes and set(map(len, batch)) <= {width}:  # the usual batch: built in C
        return list(map(dict, map(zip, repeat(header), batch))), {}
    rows: list[dict[str, Any]] = []
    flagged: dict[int, list[str]] = {}
    for values in batch:
        data = dict(zip(header, values, strict=False))
        problems = _row_problems(values, width, check_bytes)
        if problems:
            flagged[len(rows)] = problems
        if len(values) > width:
            data[OVERFLOW] = values[width:]
        rows.append(data)
    return rows, flagged


def _row_digest(header: list[str]) -> Callable[[list[str]], str]:
    """A bill's fingerprint: its row's fields as the export has them, under the export's columns
    (a column renamed or moved changes every bill's). A tenth of the cost of encoding the bill."""
    columns = "\x1f".join(header) + "\x1e"

    def digest(values: list[str]) -> str:
        return hashlib.md5((columns + "\x1f".join(values)).encode(), usedforsecurity=False).hexdigest()

    return digest


class FinanceSource(HttpSource):
    name = "finance"
    streams = STREAMS

    def __init__(
        self,
        settings: HttpSettings,
        user: str,
        password: str,
        *,
        page_size: int = 1000,
        batch_size: int = 1000,
        posting_lag: dt.timedelta = POSTING_LAG,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if batch_size < 1 or page_size < 1:
            raise ValueError("page_size and batch_size must be positive")
        if posting_lag < dt.timedelta(0):
            raise ValueError("posting_lag cannot be negative")
        super().__init__(settings, transport=transport)
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.page_size = page_size
        self.batch_size = batch_size
        self.posting_lag = posting_lag

    @classmethod
    def from_env(cls, **options: Any) -> FinanceSource:
        return cls(
            http_settings_from_env(cls.name),
            require_env(cls.name, "CAMPUSHUB_FINANCE_USER"),
            require_env(cls.name, "CAMPUSHUB_FINANCE_PASSWORD"),
            **options,
        )

    def authenticate(self, request: httpx.Request) -> None:
        request.headers["Authorization"] = self._authorization

    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        """fee_bills: the whole export, unless unchanged since `cursor` (its ETag).
        payments: every payment, or with a cursor only those made after it."""
        self.spec(stream)
        if stream == "fee_bills":
            return self._fee_bills(cursor)
        return self._payments(cursor)

    # ------------------------------------------------------------------ fee bills
    def _fee_bills(self, cursor: str | None) -> Iterator[Batch]:
        """The export, parsed as it arrives, batch by batch; its ETag is handed over with the
        last batch, once the trailer has vouched for every row. A try that fails part-way (cut
        short, a dropped connection) is retried under the source's policy, carrying on after
        the rows already handed out: the caller never sees a cursor for a file that did not
        arrive whole, and one that commits only at the end (raw landing) never keeps part of one."""
        conditional = {"If-None-Match": cursor} if cursor else None
        request = self.client.build_request("GET", FEE_BILLS_PATH, headers=conditional)
        url = str(request.url)

        def expected(response: httpx.Response) -> bool:
            return response.status_code == 200 or (response.status_code == 304 and cursor is not None)

        handed, window = _HandedOut(), PageWindow(STREAMS["fee_bills"])
        for attempt in self.attempts(url, "export"):
            with attempt:
                if attempt.again:
                    request = self.client.build_request("GET", FEE_BILLS_PATH, headers=conditional)
                self.authenticate(request)
                sent = time.monotonic()
                response = self.client.send(request, stream=True)
                try:
                    if response.status_code != 200:  # a 304 or an error page: small, read whole
                        response.read()
                    self.renew_once(response, attempt)
                    self.judge(response, url, "export", expected)
                    if response.status_code == 304:
                        if handed.rows:  # rows of a newer version are out: this one cannot be "not modified"
                            raise SourceError(
                                self.name, f"a retry was not modified after {handed.rows} newer rows", url=url
                            )
                        yield self.batch("fee_bills", "not modified", [], cursor)
                        return
                    budget = self.settings.deadline - (time.monotonic() - sent)
                    for batch in self._export_batches(response, url, handed, window, budget):
                        attempt.progress()
                        yield batch
                finally:
                    response.close()

    def _export_chunks(self, response: httpx.Response, budget: float) -> Iterator[bytes]:
        """The body's chunks, within what is left of the request deadline — counted while waiting
        on the source, not while the caller lands what came before."""
        chunks = response.iter_bytes()  # not iter_raw: a gzipped export arrives decompressed
        while True:
            started = time.monotonic()
            chunk = next(chunks, None)
            budget -= time.monotonic() - started
            if budget < 0:
                raise httpx.ReadTimeout(f"deadline of {self.settings.deadline}s exceeded", request=response.request)
            if chunk is None:
                return
            yield chunk

    def _export_batches(
        self, response: httpx.Response, url: str, handed: _HandedOut, window: PageWindow, budget: float
    ) -> Iterator[Batch]:
        """One try's batches: every row but those an earlier try handed out."""
        etag = response.headers.get("ETag")
        records = _ExportRecords(self._export_chunks(response, budget), self.name, url)
        rows = iter(records)
        header = next(rows, None)
        if header is None:
            raise Retryable.malformed(ValueError("export cut short: it is empty"))
        self._require_columns(header, url)
        digest = _row_digest(header)
        handed.skip(rows, digest, url)

        def batch(values: list[list[str]], last: bool) -> Batch:
            parsed, flagged = _rows(header, values, records.undecodable)
            checked = [
                Record(record.stream, record.key, record.data, record.problems, digest(row))
                for record, row in zip(window.page(parsed), values, strict=True)
            ]
            for n, problems in flagged.items():
                checked[n] = checked[n]._replace(problems=(*checked[n].problems, *problems))
            first = handed.rows + 1
            handed.add([record.digest or "" for record in checked])
            page = f"rows {first}-{handed.rows}" if checked else ("empty export" if first == 1 else "trailer")
            # The ETag is safe to store only once every row of this version is committed.
            return self.batch("fee_bills", page, checked, etag if last else None)

        pending: list[list[str]] = []  # the last row read may be the trailer: never handed out early
        for row in rows:
            pending.append(row)
            if len(pending) > self.batch_size:
                yield batch(pending[: self.batch_size], last=False)
                del pending[: self.batch_size]
        try:
            promised = _trailer_count(pending.pop() if pending else None)
            if records.count - 2 != promised:  # the header and the trailer are records too
                raise ValueError(f"export has {records.count - 2} rows, its trailer says {promised}")
        except ValueError as exc:
            raise Retryable.malformed(exc) from exc
        yield batch(pending, last=True)

    def _require_columns(self, header: list[str], url: str) -> None:
        missing = [name for name in STREAMS["fee_bills"].required if name not in header]
        if missing:
            raise SourceError(self.name, f"export lacks columns {', '.join(missing)}", url=url, page="export")

    # ------------------------------------------------------------------ payments
    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        body = json.loads(response.content)
        if not isinstance(body, dict):
            raise ValueError("page is not a JSON object")
        if not isinstance(body.get("data"), list) or not isinstance(body.get("has_more"), bool):
            raise ValueError("page without data and has_more")
        if not isinstance(body.get("server_time"), str):
            raise ValueError("page without server_time")
        if body["has_more"] and not isinstance(body.get("last"), str):
            raise ValueError("has_more without the last payment number to resume after")
        return body

    def _paid_since(self, cursor: str) -> str:
        """The cursor moved back by the posting lag, so payments recorded late are read too."""
        try:
            since = dt.datetime.fromisoformat(cursor)
        except ValueError:
            raise SourceError(self.name, f"stored payments cursor {cursor!r} is not a time") from None
        return (since - self.posting_lag).isoformat(timespec="microseconds")

    def _payments(self, cursor: str | None) -> Iterator[Batch]:
        """Pages in payment-number order; the next cursor is the first page's server time,
        handed over with the last page: a payment made while we page is picked up next sync."""
        window = PageWindow(STREAMS["payments"])
        params: dict[str, Any] = {"limit": self.page_size}
        if cursor:
            params["paid_since"] = self._paid_since(cursor)

        def following(request: PageRequest, body: dict[str, Any]) -> PageRequest | None:
            if not body["has_more"]:
                return None
            # Later pages are pinned to the first page's server time, so they page a stable set.
            pinned = {"paid_until": body["server_time"], **request.params, "after": body["last"]}
            return PageRequest(request.path, pinned, f"after {body['last']}")

        first = PageRequest(PAYMENTS_PATH, params, "first page")
        until = None
        for request, body, last in self.paginate(first, self._envelope, following):
            until = until or body["server_time"]
            next_cursor = until if last else None
            yield self.batch("payments", request.label, window.page(body["data"]), next_cursor)
