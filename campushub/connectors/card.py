"""Connector for 一卡通, the campus card system: signed requests, vendor errcodes, a ledger.

Accounts are paged by page number with an update-time window; transactions are replicated by
sequence number, so their cursor is the last sequence number and advances with every page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from operator import attrgetter, lt, methodcaller
from typing import Any

import httpx

from campushub.connectors.base import (
    DUPLICATE,
    AuthError,
    Batch,
    HttpSettings,
    HttpSource,
    PageRequest,
    PageWindow,
    Record,
    SourceError,
    SteadyTotal,
    StreamSpec,
)
from campushub.reference.source_codes import CARD_HOLDER_KIND, CARD_STATUS

TIME_FORMAT = "%Y%m%d%H%M%S"
ACCOUNTS_PATH = "/api/v2/card/accounts"
TRANSACTIONS_PATH = "/api/v2/card/transactions"
# Refused credentials or signatures; a replayed nonce is here too: it means our signing is broken,
# which a retry of the same request would not fix.
AUTH_ERRCODES = frozenset({40001, 40002, 40003, 40004, 40005})

STREAMS = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "card_accounts",
            key=("card_no",),
            required=("card_no", "id_type", "id_no", "card_status", "balance"),
            dates={"open_date": "%Y%m%d", "update_time": TIME_FORMAT},
            codes={"card_status": CARD_STATUS, "id_type": frozenset(CARD_HOLDER_KIND)},
            integers=("balance",),
        ),
        StreamSpec(
            "card_transactions",
            key=("seq",),
            required=("seq", "card_no", "txn_amt", "txn_time"),
            dates={"txn_time": TIME_FORMAT},
            codes={"txn_type": frozenset({"消费", "充值"})},
            integers=("seq", "txn_amt", "balance_after"),
        ),
    )
}
_PARSED = "campushub.card.body"
_data_of = attrgetter("data")
_seq_of = methodcaller("get", "seq")  # response.extensions slot: check() parses once, the parser reuses it


def sign(
    method: str, path: str, query: Iterable[tuple[str, str]], app_key: str, secret: str, timestamp: str, nonce: str
) -> str:
    """The vendor's X-Sign: HMAC-SHA256 over method, path, sorted query, key, timestamp, nonce."""
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(query))
    canonical = "\n".join((method, path, canonical_query, app_key, timestamp, nonce))
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    method: str, path: str, query: Iterable[tuple[str, str]], app_key: str, secret: str
) -> dict[str, str]:
    """Fresh signature headers: a new timestamp and nonce every call, so no two are alike."""
    timestamp = str(time.time_ns() // 1_000_000)
    nonce = secrets.token_hex(16)
    return {
        "X-App-Key": app_key,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Sign": sign(method, path, query, app_key, secret, timestamp, nonce),
    }


class CardSource(HttpSource):
    name = "card"
    streams = STREAMS
    credential_variables = ("CAMPUSHUB_CARD_APP_KEY", "CAMPUSHUB_CARD_APP_SECRET")

    def __init__(
        self,
        settings: HttpSettings,
        app_key: str,
        app_secret: str,
        *,
        page_size: int = 1000,
        transaction_limit: int = 2000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(settings, transport=transport)
        self._app_key = app_key
        self._app_secret = app_secret
        self.page_size = page_size
        self.transaction_limit = transaction_limit

    def authenticate(self, request: httpx.Request) -> None:
        # Called on every attempt: a retry carries a new nonce, so it is never taken for a replay.
        query = request.url.params.multi_items()
        request.headers.update(signed_headers(request.method, request.url.path, query, self._app_key, self._app_secret))

    def check(self, response: httpx.Response, url: str, page: str | None) -> None:
        try:
            body = json.loads(response.content)
        except ValueError:
            return  # a cut-off page: the parser fails on it too, and that is retried
        if not isinstance(body, dict) or "errcode" not in body:
            return
        errcode = body["errcode"]
        if not isinstance(errcode, int):
            return  # not the vendor's envelope: the parser rejects it and that is retried
        if errcode == 0:
            response.extensions[_PARSED] = body
            return
        reason = f"errcode {errcode}: {body.get('errmsg')}"
        if errcode in AUTH_ERRCODES:
            raise AuthError(self.name, f"request refused, {reason}", url=url, page=page)
        raise SourceError(self.name, reason, url=url, page=page)

    def _data(self, response: httpx.Response) -> dict[str, Any]:
        body = response.extensions.pop(_PARSED, None)
        if body is None:
            body = json.loads(response.content)
        if not isinstance(body, dict) or body.get("errcode") != 0 or not isinstance(body.get("data"), dict):
            raise ValueError("answer without errcode 0 and data")
        data: dict[str, Any] = body["data"]
        if not isinstance(data.get("rows"), list):
            raise ValueError("answer without rows")
        return data

    def _accounts_page(self, response: httpx.Response) -> dict[str, Any]:
        data = self._data(response)
        if not isinstance(data.get("total"), int) or not isinstance(data.get("server_time"), str):
            raise ValueError("accounts page without total and server_time")
        return data

    def _transactions_page(self, response: httpx.Response) -> dict[str, Any]:
        data = self._data(response)
        since = int(response.request.url.params["since_seq"])
        max_seq, has_more = data.get("max_seq"), data.get("has_more")
        if not isinstance(max_seq, int) or isinstance(max_seq, bool) or not isinstance(has_more, bool):
            raise ValueError("transactions page without max_seq and has_more")
        # Otherwise the next request would repeat this one for ever, or go back in the ledger.
        if max_seq < since or (has_more and max_seq == since):
            raise ValueError(f"max_seq {max_seq} does not advance from since_seq {since}")
        return data

    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        spec = self.spec(stream)
        if stream == "card_transactions":
            if cursor and not cursor.isdigit():
                raise SourceError(self.name, f"card_transactions cursor {cursor!r} is not a sequence number")
            return self._read_transactions(spec, cursor)
        if cursor and not (len(cursor) == 14 and cursor.isdigit()):
            raise SourceError(self.name, f"card_accounts cursor {cursor!r} is not a yyyyMMddHHmmss time")
        return self.pulled_again_when_shifted(stream, lambda: self._read_accounts(spec, cursor))

    def _read_accounts(self, spec: StreamSpec, cursor: str | None) -> Iterator[Batch]:
        """Pages of accounts; with a cursor, those updated at or after it (a yyyyMMddHHmmss).

        The next cursor is the server time of the first page, handed over with the last page.
        The source's window is half-open on whole seconds, so chaining it loses and repeats
        nothing (see campushub.simulators.card). An account leaving the listing mid-pull would
        shift the later pages: when the total moves, the pull starts again
        (`pulled_again_when_shifted`).
        """
        window = PageWindow(spec)
        params: dict[str, Any] = {"page_size": self.page_size, "page_no": 1}
        if cursor:
            params["update_time_begin"] = cursor
        total = SteadyTotal()

        def following(request: PageRequest, data: dict[str, Any]) -> PageRequest | None:
            page = request.params["page_no"]
            total.check(data["total"], page)
            if page * self.page_size >= data["total"] or not data["rows"]:
                return None
            # Later pages are pinned to the first page's server time, so they page a stable set.
            pinned = {"update_time_end": data["server_time"], **request.params, "page_no": page + 1}
            return PageRequest(request.path, pinned, f"page {page + 1}")

        until = None
        first = PageRequest(ACCOUNTS_PATH, params, "page 1")
        for request, data, last in self.paginate(first, self._accounts_page, following):
            until = until or data["server_time"]
            yield self.batch(spec.name, request.label, window.page(data["rows"]), until if last else None)

    def _read_transactions(self, spec: StreamSpec, cursor: str | None) -> Iterator[Batch]:
        """Transactions after the cursor's sequence number, in order; every batch's cursor is
        its highest sequence number, so the caller may store it page by page."""
        start = int(cursor) if cursor else 0
        highest = start
        window = PageWindow(spec)

        def page(since: int) -> PageRequest:
            return PageRequest(
                TRANSACTIONS_PATH, {"since_seq": since, "limit": self.transaction_limit}, f"since_seq {since}"
            )

        def following(request: PageRequest, data: dict[str, Any]) -> PageRequest | None:
            return page(data["max_seq"]) if data["has_more"] else None

        for request, data, _ in self.paginate(page(start), self._transactions_page, following):
            records = window.page(data["rows"])
            top = _top_if_ascending(records, highest)
            if top is None:  # some record is out of order or repeated: find and flag it
                records, highest = _flag_out_of_order(records, start, highest)
            else:
                highest = top
            yield self.batch(spec.name, request.label, records, str(data["max_seq"]))


def _flag_out_of_order(records: list[Record], start: int, highest: int) -> tuple[list[Record], int]:
    """The records with each seq at or below the highest seen flagged, and the new highest."""
    checked = []
    for record in records:
        seq = record.data.get("seq")
        if type(seq) is int:
            if seq > highest:
                highest = seq
            elif not any(problem.startswith("duplicate") for problem in record.problems):
                # Already delivered by an earlier sync, or sent after a later seq.
                problem = DUPLICATE if seq <= start else f"out of order: seq {seq} after {highest}"
                record = Record(record.stream, record.key, record.data, (*record.problems, problem))
        checked.append(record)
    return checked, highest


def _top_if_ascending(records: list[Record], highest: int) -> int | None:
    """The page's last seq when every record has an int seq above the one before it (and the
    first above `highest`), checked in C; None when some record may need flagging."""
    seqs = list(map(_seq_of, map(_data_of, records)))
    if not seqs:
        return highest
    if set(map(type, seqs)) != {int} or not all(map(lt, [highest, *seqs], seqs)):
        return None
    return seqs[-1]
