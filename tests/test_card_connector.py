"""The campus card connector against the running stand-in, over real HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from campushub.connectors import card
from campushub.connectors.base import AuthError, Batch, MalformedPageError, Record, SourceError
from campushub.connectors.card import CardSource, sign, signed_headers
from campushub.simulators.card import CORRUPTIBLE, NonceWindow
from campushub.simulators.malformed import malformed_kind, repeats_previous_page
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.world import CardTransaction, World
from tests.conftest import FAST_RETRY, apply_changes, http_settings, set_faults

APP_KEY, SECRET = "campushub", "dev-card-secret"
ACCOUNTS_PATH, TRANSACTIONS_PATH = "/api/v2/card/accounts", "/api/v2/card/transactions"
DUPLICATE = "duplicate: the same record was already sent"
FAST_RETRY_PATIENT = dataclasses.replace(FAST_RETRY, attempts=16)


def connector(
    cluster: SimulatorCluster,
    page_size: int = 97,
    limit: int = 500,
    secret: str = SECRET,
    app_key: str = APP_KEY,
    **overrides: object,
) -> CardSource:
    settings = http_settings(cluster, "card", **overrides)
    return CardSource(settings, app_key, secret, page_size=page_size, transaction_limit=limit)


def pull(cluster: SimulatorCluster, stream: str, cursor: str | None = None, **options: Any) -> list[Batch]:
    with connector(cluster, **options) as source:
        return list(source.read(stream, cursor))


def records(batches: list[Batch]) -> list[Record]:
    return [record for batch in batches for record in batch.records]


def keys(batches: list[Batch]) -> list[str]:
    return [record.key for record in records(batches) if record.key]


def account_keys(world: World) -> list[str]:
    return [world.card_no(i) for i in range(world.account_count) if world.account_exists(i)]


def world_transactions(world: World, since_seq: int = 0) -> Iterator[CardTransaction]:
    """Ground truth straight from the world: base transactions without the gaps, then the overlay."""
    for seq0 in range(since_seq, world.base_transaction_seq_end):
        txn = world.base_transaction(seq0)
        if txn is not None:
            yield txn
    yield from (txn for txn in world.changes.transactions if txn.seq > since_seq)


def as_row(txn: CardTransaction) -> dict[str, Any]:
    return {
        "seq": txn.seq,
        "card_no": txn.card_no,
        "txn_amt": txn.amount_fen,
        "balance_after": txn.balance_after_fen,
        "txn_type": txn.kind,
        "merchant_code": txn.merchant_code,
        "merchant_name": txn.merchant_name,
        "txn_time": txn.at.strftime("%Y%m%d%H%M%S"),
    }


def near_the_end(world: World, rows: int) -> int:
    """A since_seq about `rows` transactions before the end of the base ledger."""
    return max(0, world.base_transaction_seq_end - rows)


def assert_progressive_cursors(batches: list[Batch], start: int) -> None:
    """Every batch hands over the highest seq so far: storable page by page, never going back."""
    highest = start
    for batch in batches:
        seqs = [r.data["seq"] for r in batch.records]
        highest = max([highest, *seqs])
        assert batch.cursor == str(highest), (batch.page, batch.cursor, highest)


def wait_past_second_of(at: dt.datetime | None) -> None:
    """Sleep until the second that contains `at` is over.

    The card system filters by whole seconds and serves only finished ones, so a change is
    served by the first pull that starts after its second ended.
    """
    if at is None:
        return
    remaining = math.floor(at.timestamp()) + 1 - time.time()
    if remaining > 0:
        time.sleep(remaining + 0.01)


def latest_change(world: World) -> dt.datetime | None:
    return world.changes.log[-1].at if world.changes.log else None


def raw_get(cluster: SimulatorCluster, path: str, params: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(cluster.urls["card"] + path, params=params, headers=headers)
    assert response.status_code == 200  # the vendor answers errors with 200 and an errcode
    return response.json()


# ---------------------------------------------------------------------------- completeness
@pytest.mark.parametrize("page_size", [1000, 97, 50])
def test_accounts_every_record_exactly_once(simulators: SimulatorCluster, page_size: int) -> None:
    world = simulators.world
    batches = pull(simulators, "card_accounts", page_size=page_size)
    assert keys(batches) == account_keys(world)
    assert all(record.ok for record in records(batches))
    assert batches[-1].cursor is not None and all(b.cursor is None for b in batches[:-1])
    for record in records(batches)[::37]:
        account = world.card_account(world.account_of_card(record.key or ""))
        assert record.data["id_no"] == account.holder_no
        assert record.data["id_type"] == ("1" if account.holder_kind == "student" else "2")
        assert record.data["balance"] == account.balance_fen
        assert record.data["cust_name"] == account.name_on_card
        assert record.data["card_status"] == account.status


def test_transactions_every_record_once_in_order_and_balances_reconcile(simulators: SimulatorCluster) -> None:
    world = simulators.world
    accounts = {r.key: r.data for r in records(pull(simulators, "card_accounts", page_size=1000))}
    batches = pull(simulators, "card_transactions", limit=2000)
    pulled = records(batches)
    expected = [as_row(txn) for txn in world_transactions(world)]
    assert len(expected) >= world.base_transaction_seq_end * 0.99  # the gaps are few
    assert [r.data for r in pulled] == expected
    seqs = [r.data["seq"] for r in pulled]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert all(record.ok for record in pulled)
    assert_progressive_cursors(batches, 0)
    assert batches[-1].cursor == str(seqs[-1])

    last_balance: dict[str, int] = {}
    for record in pulled:  # in seq order, so the last one written wins
        last_balance[record.data["card_no"]] = record.data["balance_after"]
    assert set(last_balance) <= set(accounts)
    for card_no, account in accounts.items():
        assert account["balance"] == last_balance.get(card_no, 0), card_no


def test_complete_at_medium_scale(medium_simulators: SimulatorCluster) -> None:
    world = medium_simulators.world
    batches = pull(medium_simulators, "card_accounts", page_size=1000)
    assert keys(batches) == account_keys(world)
    # The whole ledger takes too long for a unit test; the last two rounds resume from a cursor
    # deep in it and cross every account's slot, the gaps included.
    since = near_the_end(world, 2 * world.base_account_count + 3)
    batches = pull(medium_simulators, "card_transactions", str(since), limit=2000)
    assert [r.data for r in records(batches)] == [as_row(txn) for txn in world_transactions(world, since)]
    assert_progressive_cursors(batches, since)


# ---------------------------------------------------------------------------- incremental
def test_incremental_pulls_return_exactly_the_changes(simulators: SimulatorCluster) -> None:
    world = simulators.world
    wait_past_second_of(latest_change(world))  # earlier tests' changes belong to the baseline
    account_cursor = pull(simulators, "card_accounts", page_size=1000)[-1].cursor
    txn_cursor = pull(simulators, "card_transactions", str(near_the_end(world, 300)))[-1].cursor
    assert account_cursor and txn_cursor

    changes = apply_changes(simulators, 30, seed=23, kinds=["card_transactions", "card_lost"])
    new_seqs = [c["key"] for c in changes if c["stream"] == "card_transactions"]
    changed_cards = {c["key"] for c in changes if c["stream"] == "card_accounts"}
    lost = {c["key"] for c in changes if c["kind"] == "card_lost"}
    assert new_seqs and lost and changed_cards > lost, "the seed must produce both kinds"

    # Transactions are sequence-numbered: no waiting, exactly the new ones, in order.
    txn_batches = pull(simulators, "card_transactions", txn_cursor, limit=7)
    assert keys(txn_batches) == new_seqs
    assert_progressive_cursors(txn_batches, int(txn_cursor))

    wait_past_second_of(max(dt.datetime.fromisoformat(c["at"]) for c in changes))
    account_batches = pull(simulators, "card_accounts", account_cursor, page_size=4)
    assert sorted(keys(account_batches)) == sorted(changed_cards)
    assert all(b.cursor is None for b in account_batches[:-1])
    new_cursor = account_batches[-1].cursor
    assert new_cursor and new_cursor > account_cursor
    rows = {r.key: r.data for r in records(account_batches)}
    assert all(rows[card_no]["card_status"] == "挂失" for card_no in lost)
    last_balance = {r.data["card_no"]: r.data["balance_after"] for r in records(txn_batches)}
    assert all(rows[card_no]["balance"] == balance for card_no, balance in last_balance.items())

    # Nothing changed since: both next pulls are empty; the ledger cursor stays put.
    again = pull(simulators, "card_accounts", new_cursor)
    assert keys(again) == [] and (again[-1].cursor or "") >= new_cursor
    txn_again = pull(simulators, "card_transactions", txn_batches[-1].cursor)
    assert keys(txn_again) == [] and txn_again[-1].cursor == txn_batches[-1].cursor


def test_a_change_in_the_current_second_is_served_exactly_once(simulators: SimulatorCluster) -> None:
    """Whole-second windows against millisecond changes: chaining cursors neither loses nor repeats."""
    world = simulators.world
    wait_past_second_of(latest_change(world))
    cursor = pull(simulators, "card_accounts", page_size=1000)[-1].cursor
    (change,) = apply_changes(simulators, 1, seed=31, kinds=["card_lost"])
    second = dt.datetime.fromisoformat(change["at"]).strftime("%Y%m%d%H%M%S")
    first = pull(simulators, "card_accounts", cursor)  # most likely still within the change's second
    wait_past_second_of(dt.datetime.fromisoformat(change["at"]))
    second_pull = pull(simulators, "card_accounts", first[-1].cursor)
    assert keys(first) + keys(second_pull) == [change["key"]]
    # Served by the first pull exactly when that pull's window already covered the change's second.
    assert (keys(first) == [change["key"]]) == ((first[-1].cursor or "") > second)


def test_cursors_that_are_not_the_streams_own_are_refused(simulators: SimulatorCluster) -> None:
    with pytest.raises(SourceError, match="not a sequence number"):
        pull(simulators, "card_transactions", "2026-09-01")
    with pytest.raises(SourceError, match="not a yyyyMMddHHmmss time"):
        pull(simulators, "card_accounts", "12345")


# ---------------------------------------------------------------------------- signing
def test_bad_secret_fails_fast_without_the_secret(simulators: SimulatorCluster) -> None:
    secret = "not-the-card-secret"
    started = time.monotonic()
    with pytest.raises(AuthError) as raised:
        pull(simulators, "card_accounts", secret=secret)
    assert time.monotonic() - started < 1.0  # not retried
    assert "errcode 40003" in str(raised.value) and "签名错误" in str(raised.value)
    assert secret not in str(raised.value)


def test_unknown_app_key_is_refused(simulators: SimulatorCluster) -> None:
    with pytest.raises(AuthError, match="errcode 40001"):
        pull(simulators, "card_transactions", app_key="someone-else")


def test_signature_follows_the_vendor_spec(simulators: SimulatorCluster) -> None:
    """Signed by hand from the spec, not with the connector's helper."""
    params = {"page_size": "3", "page_no": "2"}
    timestamp, nonce = str(int(time.time() * 1000)), uuid.uuid4().hex
    canonical = f"GET\n{ACCOUNTS_PATH}\npage_no=2&page_size=3\n{APP_KEY}\n{timestamp}\n{nonce}"
    signature = hmac.new(SECRET.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    headers = {"X-App-Key": APP_KEY, "X-Timestamp": timestamp, "X-Nonce": nonce, "X-Sign": signature}
    body = raw_get(simulators, ACCOUNTS_PATH, params, headers)
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    assert [row["card_no"] for row in body["data"]["rows"]] == account_keys(simulators.world)[3:6]
    # The signature covers the query: the same headers for another page are refused.
    assert raw_get(simulators, ACCOUNTS_PATH, {**params, "page_no": "3"}, headers)["errcode"] == 40003


def test_replayed_request_is_refused(simulators: SimulatorCluster) -> None:
    params = {"since_seq": "0", "limit": "5"}
    headers = signed_headers("GET", TRANSACTIONS_PATH, params.items(), APP_KEY, SECRET)
    first = raw_get(simulators, TRANSACTIONS_PATH, params, headers)
    assert first["errcode"] == 0 and [row["seq"] for row in first["data"]["rows"]] == [1, 2, 3, 4, 5]
    second = raw_get(simulators, TRANSACTIONS_PATH, params, headers)
    assert second == {"errcode": 40004, "errmsg": "nonce 重复"}


def test_connector_reports_a_replay_as_auth_error(
    simulators: SimulatorCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    nonce = uuid.uuid4().hex
    monkeypatch.setattr(card.secrets, "token_hex", lambda nbytes: nonce)  # a broken nonce source
    with pytest.raises(AuthError, match="errcode 40004"):
        pull(simulators, "card_transactions", page_size=10, limit=10)


@pytest.mark.parametrize("offset", [-1, 1], ids=["past", "future"])
def test_timestamp_outside_the_skew_is_refused(simulators: SimulatorCluster, offset: int) -> None:
    skew = simulators.settings.card_max_clock_skew
    params = {"since_seq": "0", "limit": "1"}
    timestamp, nonce = str(int((time.time() + offset * (skew + 60)) * 1000)), uuid.uuid4().hex
    signature = sign("GET", TRANSACTIONS_PATH, params.items(), APP_KEY, SECRET, timestamp, nonce)
    headers = {"X-App-Key": APP_KEY, "X-Timestamp": timestamp, "X-Nonce": nonce, "X-Sign": signature}
    assert raw_get(simulators, TRANSACTIONS_PATH, params, headers) == {"errcode": 40005, "errmsg": "时间戳过期"}


@pytest.mark.parametrize("dropped", ["X-App-Key", "X-Timestamp", "X-Nonce", "X-Sign", "all"])
def test_missing_signature_headers_are_refused(simulators: SimulatorCluster, dropped: str) -> None:
    params = {"page_no": "1"}
    headers = signed_headers("GET", ACCOUNTS_PATH, params.items(), APP_KEY, SECRET)
    headers = {} if dropped == "all" else {k: v for k, v in headers.items() if k != dropped}
    assert raw_get(simulators, ACCOUNTS_PATH, params, headers)["errcode"] == 40002


def test_nonces_are_forgotten_once_stale() -> None:
    window = NonceWindow(skew=300)
    assert window.first_use("a", timestamp=1000.0, now=1000.0)
    assert not window.first_use("a", timestamp=1000.0, now=1200.0)
    assert window.first_use("b", timestamp=1250.0, now=1250.0) and len(window) == 2
    # At 1301 "a" could only come back with a timestamp the skew check refuses anyway.
    assert window.first_use("c", timestamp=1301.0, now=1301.0) and len(window) == 2


def test_other_errcodes_are_source_errors_not_auth_errors(simulators: SimulatorCluster) -> None:
    with pytest.raises(SourceError) as raised:
        pull(simulators, "card_accounts", "20260230000000")  # 30 February
    assert not isinstance(raised.value, AuthError)
    assert "errcode 40010" in str(raised.value) and ACCOUNTS_PATH in str(raised.value)


def test_api_is_described(simulators: SimulatorCluster) -> None:
    api = httpx.get(simulators.urls["card"] + "/openapi.json").json()
    assert {ACCOUNTS_PATH, TRANSACTIONS_PATH} <= set(api["paths"])
    parameters = {p["name"] for p in api["paths"][TRANSACTIONS_PATH]["get"]["parameters"]}
    assert {"since_seq", "limit", "x-app-key", "x-timestamp", "x-nonce", "x-sign"} <= parameters


# ---------------------------------------------------------------------------- faults
@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rate": 0.3},
        {"rate_limit_rate": 0.3, "retry_after": 0},
        {"drop_rate": 0.3},
        {"truncate_rate": 0.3},
        {"latency_ms": 20},
        {"error_rate": 0.1, "rate_limit_rate": 0.1, "drop_rate": 0.1, "truncate_rate": 0.1, "retry_after": 0},
    ],
    ids=["5xx", "429", "drop", "truncate", "latency", "all"],
)
def test_faults_lose_nothing_and_duplicate_nothing(simulators: SimulatorCluster, knobs: dict[str, float]) -> None:
    world = simulators.world
    set_faults(simulators, "card", **knobs)
    # Drops and truncations reach the service, which has then seen the nonce: only a
    # connector that signs every attempt afresh gets through them.
    # With every knob on, 40% of attempts fail: 8 attempts would give up on one of ~25 pages
    # about once in a hundred runs, 16 about once in a million.
    patient = FAST_RETRY_PATIENT
    assert keys(pull(simulators, "card_accounts", page_size=50, retry=patient)) == account_keys(world)
    since = near_the_end(world, 3000)
    batches = pull(simulators, "card_transactions", str(since), limit=250, retry=patient)
    assert [r.data for r in records(batches)] == [as_row(txn) for txn in world_transactions(world, since)]
    assert all(record.ok for record in records(batches))
    assert_progressive_cursors(batches, since)


def test_page_that_stays_malformed_fails_with_source_url_and_page(simulators: SimulatorCluster) -> None:
    set_faults(simulators, "card", truncate_rate=1.0)
    with pytest.raises(MalformedPageError) as raised:
        pull(simulators, "card_transactions", "12")
    message = str(raised.value)
    assert message.startswith(f"card: gave up after {FAST_RETRY.attempts} attempts")
    assert TRANSACTIONS_PATH in message and "(since_seq 12)" in message


# ---------------------------------------------------------------------------- malformed records
def check_flags(
    pulled: list[Record], served: list[tuple[int, bool]], stream: str, rate: float, reasons: dict[str, str], seed: int
) -> int:
    assert len(pulled) == len(served) and sum(repeat for _, repeat in served) >= 2
    flagged = 0
    for record, (n, repeat) in zip(pulled, served, strict=True):
        kind = malformed_kind(seed, stream, n, rate, CORRUPTIBLE[stream])
        expected = {reasons[kind]} if kind else set()
        if repeat and record.key is not None:  # a record without its key cannot be recognised again
            expected.add(DUPLICATE)
        assert set(record.problems) == expected, (n, record.problems)
        assert record.data  # the raw payload travels with the flag
        flagged += bool(expected)
    return flagged


def test_malformed_accounts_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate, page_size = 0.2, 20
    world = simulators.world
    set_faults(simulators, "card", malformed_rate=rate)
    pulled = records(pull(simulators, "card_accounts", page_size=page_size))
    existing = [i for i in range(world.account_count) if world.account_exists(i)]
    served: list[tuple[int, bool]] = []
    for page in range(1, -(-len(existing) // page_size) + 1):
        first = (page - 1) * page_size
        if repeats_previous_page(world.seed, "card_accounts", page, rate):
            served.append((existing[first - 1], True))
        served += [(i, False) for i in existing[first : first + page_size]]
    reasons = {
        "impossible_date": "open_date: '20250230' is not a valid date (%Y%m%d)",
        "missing_key": "missing card_no",
        "unknown_code": "card_status: unknown code '未知'",
    }
    assert check_flags(pulled, served, "card_accounts", rate, reasons, world.seed) >= 60


def test_malformed_transactions_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate, limit = 0.2, 50
    world = simulators.world
    set_faults(simulators, "card", malformed_rate=rate)
    since = near_the_end(world, 2000)
    batches = pull(simulators, "card_transactions", str(since), limit=limit)
    seqs = [txn.seq for txn in world_transactions(world, since)]
    served: list[tuple[int, bool]] = []
    start = since
    for first in range(0, len(seqs), limit):
        # A page is named by its since_seq; a repeat is the transaction with that very seq.
        exists = start in seqs or (start == since and world.base_transaction(since - 1) is not None)
        if repeats_previous_page(world.seed, "card_transactions", start, rate) and exists:
            served.append((start, True))
        page = seqs[first : first + limit]
        served += [(seq, False) for seq in page]
        start = page[-1]
    reasons = {
        "impossible_date": "txn_time: '20260231120000' is not a valid date (%Y%m%d%H%M%S)",
        "missing_key": "missing card_no",
        "unknown_code": "txn_type: unknown code '冲正X'",
    }
    assert check_flags(records(batches), served, "card_transactions", rate, reasons, world.seed) >= 300
    # Repeats do not move the cursor back.
    assert [b.cursor for b in batches] == [str(seqs[min(n + limit, len(seqs)) - 1]) for n in range(0, len(seqs), limit)]
