"""一卡通 — the campus card system as card vendors expose it: every request signed with an
HMAC-SHA256 over method, path, sorted query, app key, timestamp and nonce; errors as HTTP 200
with `{"errcode", "errmsg"}`; accounts by page number with a `yyyyMMddHHmmss` update-time window;
transactions by sequence number (`since_seq`), the way a ledger is replicated.

Update-time windows have whole-second resolution while changes are stamped far more finely,
so the window is half-open: `update_time_begin <= update_time < update_time_end`,
and `server_time` (the default end) is the start of the current second. A change is therefore
served by exactly one of two consecutive pulls that chain `server_time` into the next
`update_time_begin`: changes in the current, unfinished second wait for the next pull (at most
a second's delay) instead of being served twice or not at all.

Parameters of the wrong shape are refused by the framework (HTTP 422); a well-formed time that
is no date (`20260230000000`) with errcode 40010.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response

from campushub.simulators.faults import FaultSettings
from campushub.simulators.malformed import Corruptible, maybe_corrupt, repeats_previous_page
from campushub.simulators.service import Selection, Without, json_response, page_slice, service_app
from campushub.simulators.settings import SimulatorSettings
from campushub.simulators.world import CST, SNAPSHOT, CardAccount, CardTransaction, World

MAX_PAGE_SIZE = 1000
MAX_TRANSACTIONS = 2000
TIME_FORMAT = "%Y%m%d%H%M%S"
MAX_NONCE_LENGTH = 64

ACCOUNTS = "card_accounts"
TRANSACTIONS = "card_transactions"
CORRUPTIBLE = {
    ACCOUNTS: Corruptible(key="card_no", date=("open_date", "20250230"), code=("card_status", "未知")),
    TRANSACTIONS: Corruptible(key="card_no", date=("txn_time", "20260231120000"), code=("txn_type", "冲正X")),
}

# Vendor error codes, all sent with HTTP 200.
BAD_APP_KEY, MISSING_SIGNATURE, BAD_SIGNATURE, REPLAYED_NONCE, STALE_TIMESTAMP = 40001, 40002, 40003, 40004, 40005
BAD_PARAMETER = 40010
_NEVER = dt.datetime.min.replace(tzinfo=CST)
# The smallest step of a datetime: (t - _TICK, u - _TICK] is exactly [t, u) at any resolution.
_TICK = dt.timedelta(microseconds=1)


class _VendorError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode, self.errmsg = errcode, errmsg


class NonceWindow:
    """Nonces already used, kept only while their timestamp is inside the clock-skew window.

    Once a nonce's timestamp is older than the window, a replay of it is refused as stale
    anyway, so forgetting it then keeps memory bounded by the request rate, not the uptime.
    """

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def first_use(self, nonce: str, timestamp: float, now: float) -> bool:
        while self._heap and self._heap[0][0] < now:
            _, expired = heapq.heappop(self._heap)
            del self._expiry[expired]
        if nonce in self._expiry:
            return False
        expiry = timestamp + self.skew
        self._expiry[nonce] = expiry
        heapq.heappush(self._heap, (expiry, nonce))
        return True

    def __len__(self) -> int:
        return len(self._expiry)


class _TimeText:
    """`yyyyMMddHHmmss` for transaction times, with the date part cached.

    strftime would be a third of the cost of rendering a transaction; consecutive transactions
    share their day, so only the time of day is formatted per row.
    """

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, at: dt.datetime) -> str:
        day = at.toordinal()
        prefix = self._days.get(day)
        if prefix is None:
            if len(self._days) > 4096:
                self._days.clear()
            prefix = self._days[day] = at.strftime("%Y%m%d")
        return f"{prefix}{at.hour * 10000 + at.minute * 100 + at.second:06d}"


def account_json(account: CardAccount) -> dict[str, Any]:
    return {
        "card_no": account.card_no,
        "id_type": "1" if account.holder_kind == "student" else "2",
        "id_no": account.holder_no,
        "cust_name": account.name_on_card,
        "mobile": account.phone,
        "card_status": account.status,
        "balance": account.balance_fen,
        "open_date": account.opened.strftime("%Y%m%d"),
        "update_time": account.updated_at.astimezone(CST).strftime(TIME_FORMAT),
    }


def parse_time(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.strptime(value, TIME_FORMAT).replace(tzinfo=CST)
    except ValueError:
        raise _VendorError(BAD_PARAMETER, f"参数错误: {name} 不是有效时间 (yyyyMMddHHmmss)") from None


AppKey = Annotated[str | None, Header(description="the app key issued by the card vendor")]
Timestamp = Annotated[str | None, Header(description="epoch milliseconds when the request was signed")]
Nonce = Annotated[str | None, Header(description="a random string, never reused")]
Sign = Annotated[
    str | None,
    Header(description="hex HMAC-SHA256(secret, newline-joined METHOD, path, sorted k=v&..., key, timestamp, nonce)"),
]
PageNo = Annotated[int, Query(ge=1, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
TimeBegin = Annotated[
    str | None,
    Query(pattern=r"^\d{14}$", description="yyyyMMddHHmmss (CST): only accounts updated at or after this second"),
]
TimeEnd = Annotated[
    str | None,
    Query(
        pattern=r"^\d{14}$",
        description="yyyyMMddHHmmss (CST), exclusive; pass the first page's server_time to page a stable set",
    ),
]
SinceSeq = Annotated[int, Query(ge=0, description="only transactions with a greater sequence number")]
Limit = Annotated[int, Query(ge=1, le=MAX_TRANSACTIONS)]


def create_app(world: World, settings: SimulatorSettings, faults: FaultSettings, fault_seed: int = 0) -> FastAPI:
    app = service_app(
        "一卡通 Campus card (stand-in)",
        "Card accounts and card transactions. Every request carries X-App-Key, X-Timestamp, X-Nonce and "
        "X-Sign; errors are HTTP 200 with a nonzero `errcode`.",
        world,
        faults,
        fault_seed,
    )
    selection = Selection(world)
    nonces = NonceWindow(settings.card_max_clock_skew)
    time_text = _TimeText()
    # Only a dual-role person's student slot has no card (they carry their staff card).
    candidates = (world.student_index_of_dual_staff(staff) for staff in range(world.staff_count))
    cardless = sorted(i for i in candidates if i is not None and not world.account_exists(i))

    @app.exception_handler(_VendorError)
    def vendor_error(request: Request, exc: _VendorError) -> Response:
        return json_response({"errcode": exc.errcode, "errmsg": exc.errmsg})

    # Async, so it runs on the event loop: the nonce window needs no lock.
    async def verify_signature(
        request: Request,
        x_app_key: AppKey = None,
        x_timestamp: Timestamp = None,
        x_nonce: Nonce = None,
        x_sign: Sign = None,
    ) -> None:
        if not (x_app_key and x_timestamp and x_nonce and x_sign):
            raise _VendorError(MISSING_SIGNATURE, "缺少签名参数 (X-App-Key, X-Timestamp, X-Nonce, X-Sign)")
        if not x_timestamp.isdigit() or len(x_timestamp) > 16 or len(x_nonce) > MAX_NONCE_LENGTH:
            raise _VendorError(MISSING_SIGNATURE, "缺少签名参数: X-Timestamp 须为毫秒时间戳, X-Nonce 至多 64 个字符")
        if not hmac.compare_digest(x_app_key.encode(), settings.card_app_key.encode()):
            raise _VendorError(BAD_APP_KEY, "app_key 无效")
        query = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))
        canonical = "\n".join((request.method, request.url.path, query, x_app_key, x_timestamp, x_nonce))
        expected = hmac.new(settings.card_app_secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), x_sign.encode()):
            raise _VendorError(BAD_SIGNATURE, "签名错误")
        # Only after the signature: who lacks the secret learns nothing about our clock, and
        # cannot use up nonces.
        now, signed_at = time.time(), int(x_timestamp) / 1000
        if abs(now - signed_at) > settings.card_max_clock_skew:
            raise _VendorError(STALE_TIMESTAMP, "时间戳过期")
        if not nonces.first_use(x_nonce, signed_at, now):
            raise _VendorError(REPLAYED_NONCE, "nonce 重复")

    signed = [Depends(verify_signature)]

    def ok(data: dict[str, Any]) -> Response:
        return json_response({"errcode": 0, "errmsg": "ok", "data": data})

    def select_accounts(begin: dt.datetime | None, end: dt.datetime | None) -> tuple[Sequence[int], dt.datetime]:
        """The accounts updated in [begin, end), and end (the start of this second by default)."""
        if begin is None or begin < SNAPSHOT:
            end = end or dt.datetime.now(CST).replace(microsecond=0)
            if begin is None:
                return Without(range(world.account_count), cardless), end

            def updated_at(index: int) -> dt.datetime:
                return world.card_account(index).updated_at if world.account_exists(index) else _NEVER

            return selection.select(ACCOUNTS, world.account_count, begin - _TICK, end - _TICK, updated_at), end
        # Under the overlay's lock every change stamped before `now` is already recorded, so none
        # can appear later inside a window that has been served.
        with world.changes.lock:
            end = end or dt.datetime.now(CST).replace(microsecond=0)
            return world.changes.changed_between(ACCOUNTS, begin - _TICK, end - _TICK), end

    @app.get("/api/v2/card/accounts", dependencies=signed, summary="卡户信息 card accounts")
    def accounts(
        page_no: PageNo = 1,
        page_size: PageSize = 100,
        update_time_begin: TimeBegin = None,
        update_time_end: TimeEnd = None,
    ) -> Response:
        begin = parse_time(update_time_begin, "update_time_begin")
        chosen, end = select_accounts(begin, parse_time(update_time_end, "update_time_end"))
        rate = faults.malformed_rate
        repeat = repeats_previous_page(world.seed, ACCOUNTS, page_no, rate)
        rows = []
        for index in page_slice(chosen, page_no, page_size, repeat):
            row = account_json(world.card_account(index))
            rows.append(maybe_corrupt(row, world.seed, ACCOUNTS, index, rate, CORRUPTIBLE[ACCOUNTS]) if rate else row)
        data = {
            "total": len(chosen),
            "page_no": page_no,
            "page_size": page_size,
            "server_time": end.strftime(TIME_FORMAT),
            "rows": rows,
        }
        return ok(data)

    def transaction(seq: int) -> CardTransaction | None:
        """The transaction with this vendor sequence number, if there is one."""
        base_end = world.base_transaction_seq_end
        if 1 <= seq <= base_end:
            return world.base_transaction(seq - 1)
        overlay = world.changes.transactions
        return overlay[seq - base_end - 1] if base_end < seq <= base_end + len(overlay) else None

    def transactions_after(since_seq: int) -> Iterator[CardTransaction]:
        base_end = world.base_transaction_seq_end
        # Vendor seq s is internal seq s - 1: seq > since_seq starts at internal since_seq.
        for seq0 in range(since_seq, base_end):
            txn = world.base_transaction(seq0)
            if txn is not None:  # a gap: the slot of an account that does not exist
                yield txn
        overlay = world.changes.transactions
        yield from itertools.islice(overlay, max(0, since_seq - base_end), len(overlay))

    def transaction_json(txn: CardTransaction) -> dict[str, Any]:
        return {
            "seq": txn.seq,
            "card_no": txn.card_no,
            "txn_amt": txn.amount_fen,
            "balance_after": txn.balance_after_fen,
            "txn_type": txn.kind,
            "merchant_code": txn.merchant_code,
            "merchant_name": txn.merchant_name,
            "txn_time": time_text(txn.at),
        }

    @app.get("/api/v2/card/transactions", dependencies=signed, summary="交易流水 card transactions")
    def transactions(since_seq: SinceSeq = 0, limit: Limit = 500) -> Response:
        following = transactions_after(since_seq)
        chosen = list(itertools.islice(following, limit))
        has_more = next(following, None) is not None
        max_seq = chosen[-1].seq if chosen else since_seq
        rate = faults.malformed_rate
        # Ledger paging has no page numbers; a page is named by where it starts.
        if repeats_previous_page(world.seed, TRANSACTIONS, since_seq, rate):
            previous = transaction(since_seq)
            if previous is not None:
                chosen.insert(0, previous)
        rows = [transaction_json(txn) for txn in chosen]
        if rate:
            plan = CORRUPTIBLE[TRANSACTIONS]
            rows = [maybe_corrupt(row, world.seed, TRANSACTIONS, row["seq"], rate, plan) for row in rows]
        return ok({"rows": rows, "max_seq": max_seq, "has_more": has_more})

    return app
