"""Connector for 财务, the finance system: HTTP Basic, a GBK CSV export, keyset-paged payments.

The fee-bill export is one file of every bill, however many there are. It is fetched with a
conditional GET (the stored cursor is its ETag), spooled to a temporary file, checked against
its trailer line, and only then decoded and parsed, a batch at a time: memory stays flat
whatever the file's size, and a file cut short in transit is retried, never half-loaded.
"""

from __future__ import annotations

import base64
import codecs
import csv
import hashlib
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice, repeat
from typing import IO, Any

import httpx

from campushub.connectors.base import (
    Batch,
    HttpSettings,
    HttpSource,
    MalformedPageError,
    PageRequest,
    PageWindow,
    Record,
    SourceError,
    StreamSpec,
)
from campushub.connectors.settings import http_settings_from_env, require_env

FEE_BILLS_PATH = "/exports/fee-bills.csv"
PAYMENTS_PATH = "/api/payments"
ENCODING = "gbk"
TRAILER = "#合计"  # the export's last line: "#合计,<number of rows>"
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S%z"
SLASHED = "%Y/%m/%d"
SPOOL_IN_MEMORY = 4 * 1024 * 1024  # bytes of an export kept in memory before it spills to disk
OVERFLOW = "_overflow"  # where values beyond the header's columns are kept, so nothing is dropped

_SPOOL = "campushub.spool"  # response extension that carries a spooled body to the parser
_TRAILER_PREFIX = f"{TRAILER},".encode(ENCODING)

STREAMS = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "fee_bills",
            key=("账单号",),
            required=("账单号", "学号", "收费项目代码", "应收金额(分)"),
            dates={"开票日期": SLASHED, "截止日期": SLASHED},
            codes={"收费项目代码": frozenset({"XF", "ZSF"}), "缴费状态": frozenset({"已缴清", "部分缴费", "未缴费"})},
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


@dataclass
class _Export:
    """A complete, verified export, positioned at its first data row."""

    text: IO[str]
    reader: Iterator[list[str]]
    header: list[str]
    rows: int
    etag: str | None
    url: str
    undecodable: bool  # some bytes are not GBK: look for U+FFFD in every row


def _trailer_rows(spool: IO[bytes]) -> int:
    """The row count the trailer promises; ValueError if the file does not end with one."""
    spool.seek(0, io.SEEK_END)
    size = spool.tell()
    spool.seek(max(0, size - 256))
    tail = spool.read()
    # A cut can fall inside the count ("#合计,12" of "#合计,1234"): only a terminated line counts.
    if not tail.endswith(b"\n"):
        raise ValueError("export cut short: it does not end with a complete line")
    last_line = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1 :].rstrip(b"\r\n")
    count = last_line.removeprefix(_TRAILER_PREFIX)
    if count == last_line or not count.isdigit():
        raise ValueError(f"export cut short: its last line is not the {TRAILER} trailer")
    return int(count)


class _ExportScan:
    """Counts the line breaks that end a CSV record, and whether every byte decodes, chunk by
    chunk as the export arrives: the work is done while the source is still writing the file.

    Breaks inside quoted fields do not end a record. Counting on the bytes is safe: a GBK
    character's second byte is 0x40 or above, so neither a line feed nor a double quote can
    hide inside one. Decoding here, in C, spares a per-value check for U+FFFD in the common
    case of a clean file.
    """

    def __init__(self) -> None:
        self.ends = 0
        self.decodes = True
        self._quoted = False
        self._decoder = codecs.getincrementaldecoder(ENCODING)()

    def feed(self, chunk: bytes) -> None:
        if self.decodes:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self.decodes = False
        if not self._quoted and b'"' not in chunk:
            self.ends += chunk.count(b"\n")
            return
        lines = chunk.split(b"\n")
        for line in lines[:-1]:
            self._quoted ^= line.count(b'"') % 2 == 1
            self.ends += not self._quoted
        self._quoted ^= lines[-1].count(b'"') % 2 == 1

    def finish(self) -> tuple[int, bool]:
        """(record-ending line breaks, whether every byte decodes) of everything fed."""
        if self.decodes:
            try:
                self._decoder.decode(b"", final=True)  # a file ending inside a character
            except UnicodeDecodeError:
                self.decodes = False
        return self.ends, self.decodes


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
        spool_in_memory: int = SPOOL_IN_MEMORY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if batch_size < 1 or page_size < 1:
            raise ValueError("page_size and batch_size must be positive")
        super().__init__(settings, transport=transport)
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.page_size = page_size
        self.batch_size = batch_size
        self.spool_in_memory = spool_in_memory

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
    def _send(self, request: httpx.Request, url: str, page: str | None) -> httpx.Response:
        """The export goes to a temporary file, not memory; every other answer as the base sends it.

        This overrides the base's whole-body read for one path only, so the export still goes
        through `fetch` and its retry policy: the parser finds the file in the response's
        extensions.
        """
        if not request.url.path.endswith(FEE_BILLS_PATH):
            return super()._send(request, url, page)
        deadline = time.monotonic() + self.settings.deadline
        response = self.client.send(request, stream=True)
        # Not a `with`: on success the file outlives this call, owned by the parser.
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_in_memory)  # noqa: SIM115
        scan = _ExportScan()
        try:
            for chunk in response.iter_bytes():  # iter_bytes, not iter_raw: a gzipped export arrives decompressed
                spool.write(chunk)
                scan.feed(chunk)  # while the source writes the rest
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"deadline of {self.settings.deadline}s exceeded", request=request)
        except httpx.DecodingError as exc:
            spool.close()
            # A body that does not decompress was damaged on the way: worth another try.
            raise httpx.RemoteProtocolError(f"body does not decode: {exc}", request=request) from exc
        except BaseException:
            spool.close()
            raise
        finally:
            response.close()
        spool.seek(0)
        if response.status_code == 200:
            response.extensions[_SPOOL] = spool, scan.finish()
        else:
            with spool:  # a 304 or an error page: small, and read by nothing but the status checks
                response._content = spool.read()
        return response

    def _open_export(self, response: httpx.Response) -> _Export | None:
        """Verify a spooled export against its trailer and open it for parsing (None: 304).

        A file cut short raises ValueError, which `fetch` retries as a malformed answer.
        """
        if response.status_code == 304:
            return None
        spool: IO[bytes]
        spool, (ends, decodes) = response.extensions.pop(_SPOOL)
        try:
            promised = _trailer_rows(spool)
            found = ends - 2  # the header and the trailer end records too
            if found != promised:
                raise ValueError(f"export has {found} rows, its trailer says {promised}")
            spool.seek(0)
            # Undecodable bytes become U+FFFD and flag their record instead of failing the sync.
            text = io.TextIOWrapper(spool, encoding=ENCODING, errors="replace", newline="")
            reader = csv.reader(text)
            header = next(reader, [])
            missing = [name for name in STREAMS["fee_bills"].required if name not in header]
            if missing:
                text.close()
                raise SourceError(
                    self.name, f"export lacks columns {', '.join(missing)}", url=str(response.url), page="export"
                )
        except BaseException:
            spool.close()
            raise
        url = str(response.url.copy_with(query=None))
        return _Export(text, reader, header, promised, response.headers.get("ETag"), url, not decodes)

    def _fee_bills(self, cursor: str | None) -> Iterator[Batch]:
        headers = {"If-None-Match": cursor} if cursor else None
        export = self.fetch(
            "GET",
            FEE_BILLS_PATH,
            self._open_export,
            page="export",
            headers=headers,
            accept=lambda response: response.status_code == 200 or (response.status_code == 304 and cursor is not None),
        )
        if export is None:
            yield self.batch("fee_bills", "not modified", [], cursor)
            return
        with export.text:
            window = PageWindow(STREAMS["fee_bills"])
            header, undecodable = export.header, export.undecodable
            digest = _row_digest(header)
            done = 0
            while True:
                wanted = min(self.batch_size, export.rows - done)
                values = list(islice(export.reader, wanted))
                rows, flagged = _rows(header, values, undecodable)
                first, done = done + 1, done + len(rows)
                last = done >= export.rows
                # The bytes agreed with the trailer, the parser must too (a lone \r ends a CSV record
                # but not a line): checked before the last batch, so no cursor has been handed out.
                if len(rows) < wanted or (last and (next(export.reader, None) or [""])[0] != TRAILER):
                    raise MalformedPageError(
                        self.name,
                        f"export does not parse into as many rows as its trailer promises ({export.rows})",
                        url=export.url,
                        page=f"rows {first}-{done}",
                    )
                records = [
                    Record(record.stream, record.key, record.data, record.problems, digest(row))
                    for record, row in zip(window.page(rows), values, strict=True)
                ]
                for n, problems in flagged.items():
                    record = records[n]
                    records[n] = record._replace(problems=(*record.problems, *problems))
                page = f"rows {first}-{done}" if rows else "empty export"
                # The ETag is safe to store only once every row of this version is committed.
                yield self.batch("fee_bills", page, records, export.etag if last else None)
                if last:
                    return

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

    def _payments(self, cursor: str | None) -> Iterator[Batch]:
        """Pages in payment-number order; the next cursor is the first page's server time,
        handed over with the last page: a payment made while we page is picked up next sync."""
        window = PageWindow(STREAMS["payments"])
        params: dict[str, Any] = {"limit": self.page_size}
        if cursor:
            params["paid_since"] = cursor

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
