"""The HR connector against the running stand-in, over real HTTP (plus a few protocol edge cases
that a stand-in cannot be asked to produce on cue, over httpx's MockTransport)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable

import httpx
import pytest

from campushub.connectors.base import AuthError, Batch, HttpSettings, MalformedPageError, Record
from campushub.connectors.hr import HRSource
from campushub.reference.codes import code_by_name, code_table
from campushub.simulators import catalog
from campushub.simulators.hr import CORRUPTIBLE, MAX_TOKENS, TokenStore, epoch_ms, staff_json
from campushub.simulators.malformed import malformed_kind, repeats_previous_page
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.world import SNAPSHOT
from tests.conftest import FAST_RETRY, apply_changes, http_settings, set_faults

CLIENT_ID, CLIENT_SECRET = "campushub", "dev-hr-secret"
TOKEN_LIFETIME = 2.0  # what the `simulators` fixture gives the HR stand-in
STAFF_CHANGES = ["staff_phone", "staff_title"]


def connector(cluster: SimulatorCluster, page_size: int = 7, secret: str = CLIENT_SECRET) -> HRSource:
    return HRSource(http_settings(cluster, "hr"), CLIENT_ID, secret, page_size=page_size)


def record_traffic(source: HRSource) -> list[tuple[str, int]]:
    """(path, status) of every answer the connector receives, retries and token requests included."""
    seen: list[tuple[str, int]] = []
    source.client.event_hooks["response"].append(
        lambda response: seen.append((response.url.path, response.status_code))
    )
    return seen


def pull(cluster: SimulatorCluster, stream: str, cursor: str | None = None, page_size: int = 7) -> list[Batch]:
    with connector(cluster, page_size) as source:
        return list(source.read(stream, cursor))


def keys(batches: list[Batch]) -> list[str]:
    return [record.key for batch in batches for record in batch.records if record.key]


def expected_staff_keys(cluster: SimulatorCluster) -> list[str]:
    return [cluster.world.staff(i).staff_no for i in range(cluster.world.staff_count)]


def staff_index(staff_no: str) -> int:
    return int(staff_no[4:])  # 工号 is the hire year, then the index


def wait_until_stamped(changes: list[dict]) -> None:
    """Changes applied in a burst are stamped a millisecond apart, so the last ones can lie a
    little in the future; a pull is only complete for them once the clock has passed them."""
    latest = max(dt.datetime.fromisoformat(c["at"]) for c in changes)
    time.sleep(max(0.0, (latest - dt.datetime.now(dt.UTC)).total_seconds() + 0.005))


def mock_source(handler: Callable[[httpx.Request], httpx.Response]) -> HRSource:
    settings = HttpSettings(base_url="http://hr.test", retry=FAST_RETRY, timeout=5.0, deadline=5.0)
    return HRSource(settings, CLIENT_ID, CLIENT_SECRET, transport=httpx.MockTransport(handler))


def answer(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
    # As a stream, the way a real transport hands over a body: the connector reads it raw.
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(json.dumps(body).encode()))


def staff_keys_of(changes: list[dict]) -> set[str]:
    return {c["key"] for c in changes if c["stream"] == "staff"}


# ---------------------------------------------------------------------------- completeness
@pytest.mark.parametrize("page_size", [500, 7, 4])
def test_staff_every_record_exactly_once(simulators: SimulatorCluster, page_size: int) -> None:
    batches = pull(simulators, "staff", page_size=page_size)
    assert keys(batches) == expected_staff_keys(simulators)
    assert len(batches) == -(-simulators.world.staff_count // page_size)
    assert all(record.ok for batch in batches for record in batch.records)
    assert batches[-1].cursor is not None and batches[-1].cursor.isdigit()
    assert all(b.cursor is None for b in batches[:-1])


def test_staff_complete_at_medium_scale(medium_simulators: SimulatorCluster) -> None:
    batches = pull(medium_simulators, "staff", page_size=100)
    assert keys(batches) == expected_staff_keys(medium_simulators)
    assert medium_simulators.world.staff_count == 350 and len(batches) == 4
    assert_fields_say_what_the_world_knows(medium_simulators, [r for b in batches for r in b.records])


def assert_fields_say_what_the_world_knows(cluster: SimulatorCluster, records: list[Record]) -> None:
    ethnicity_code, political_code = code_by_name("ethnicity"), code_by_name("political_status")
    typos = 0
    for record in records:
        staff = cluster.world.staff(staff_index(record.key or ""))
        person, data = staff.person, record.data
        assert data["name"] == staff.name_in_hr
        typos += staff.name_in_hr != person.name
        assert data["gender"] == {"1": "男", "2": "女"}[person.sex]
        assert dt.datetime.strptime(data["birthDate"], "%Y/%m/%d").date() == person.birth
        assert dt.datetime.strptime(data["hireDate"], "%Y/%m/%d").date() == staff.hire_date
        assert (data["idNumber"], data["mobile"]) == (person.id_number, staff.phone)
        assert ethnicity_code[data["ethnicity"]] == person.ethnicity
        assert political_code[data["politicalStatus"]] == person.political_status
        assert (data["deptCode"], data["positionCode"], data["titleCode"]) == (
            staff.department,
            staff.position,
            staff.title,
        )
        assert (data["employmentStatus"], data["salaryGrade"]) == (staff.employment_status, staff.salary_grade)
        assert int(data["monthlyGrossFen"]) == staff.monthly_gross_fen
        assert data["modifiedAt"] == round(staff.updated_at.timestamp() * 1000)
        assert data["email"] == f"{staff.staff_no}@gdou.edu.cn"
    assert typos, "HR's own misspelling of a name must come through, not the person's real name"


def test_reference_streams(simulators: SimulatorCluster) -> None:
    departments = pull(simulators, "departments", page_size=4)
    assert keys(departments) == [code for code, _, _ in simulators.world.hr_departments()]
    assert {r.data["parentCode"] for b in departments for r in b.records} == {"GDOU"}
    assert keys(pull(simulators, "positions", page_size=4)) == [code for code, _ in catalog.POSITIONS]
    titles = pull(simulators, "titles", page_size=5)
    assert keys(titles) == list(code_table("professional_title"))
    # Read whole every time: there is no incremental cursor to store.
    assert all(b.cursor is None for b in departments + titles)


# ---------------------------------------------------------------------------- incremental
def test_incremental_pull_returns_exactly_the_changes(simulators: SimulatorCluster) -> None:
    cursor = pull(simulators, "staff")[-1].cursor
    changes = apply_changes(simulators, 12, seed=23, kinds=STAFF_CHANGES)
    expected = staff_keys_of(changes)
    assert len(expected) > 3, "the seed must touch several staff records"
    wait_until_stamped(changes)
    batches = pull(simulators, "staff", cursor, page_size=3)
    assert sorted(keys(batches)) == sorted(expected)
    for record in (r for b in batches for r in b.records):
        assert record.data == staff_json(simulators.world.staff(staff_index(record.key or "")))
    # Nothing changed since: the next pull is empty and moves the cursor forward.
    again = pull(simulators, "staff", batches[-1].cursor)
    assert keys(again) == [] and int(again[-1].cursor or 0) >= int(batches[-1].cursor or 0)


def test_changes_during_a_sync_wait_for_the_next_one(simulators: SimulatorCluster) -> None:
    cursor = pull(simulators, "staff")[-1].cursor
    before = apply_changes(simulators, 6, seed=31, kinds=STAFF_CHANGES)
    wait_until_stamped(before)
    during: list[dict] = []
    with connector(simulators, page_size=1) as source:
        batches = []
        for batch in source.read("staff", cursor):
            batches.append(batch)
            if not during:
                during = apply_changes(simulators, 6, seed=37, kinds=STAFF_CHANGES)
    assert len(batches) >= 2, "the change must land mid-sync"
    assert sorted(keys(batches)) == sorted(staff_keys_of(before))
    wait_until_stamped(during)
    assert sorted(keys(pull(simulators, "staff", batches[-1].cursor))) == sorted(staff_keys_of(during))


def test_cursor_older_than_the_snapshot_scans_modification_times(simulators: SimulatorCluster) -> None:
    since = SNAPSHOT - dt.timedelta(days=60)
    batches = pull(simulators, "staff", str(epoch_ms(since)), page_size=5)
    world = simulators.world
    expected = [world.staff(i).staff_no for i in range(world.staff_count) if world.staff(i).updated_at > since]
    assert 0 < len(expected) < world.staff_count
    assert keys(batches) == expected


# ---------------------------------------------------------------------------- tokens
def test_token_expiry_mid_sync_refreshes_before_it_runs_out(simulators: SimulatorCluster) -> None:
    set_faults(simulators, "hr", latency_ms=100)
    started = time.monotonic()
    with connector(simulators, page_size=2) as source:
        traffic = record_traffic(source)
        batches = list(source.read("staff"))
    assert time.monotonic() - started > TOKEN_LIFETIME, "the sync must outlast a token"
    assert keys(batches) == expected_staff_keys(simulators)
    assert traffic.count(("/oauth/token", 200)) >= 2
    assert not [status for _, status in traffic if status == 401], "refreshed ahead of expiry, never refused"


def test_token_forgotten_by_the_server_is_renewed_once(simulators: SimulatorCluster) -> None:
    with connector(simulators, page_size=5) as source:
        traffic = record_traffic(source)
        batches = []
        for batch in source.read("staff"):
            if not batches:
                simulators.services["hr"].app.state.tokens.revoke_all()  # as a restart would
            batches.append(batch)
    assert keys(batches) == expected_staff_keys(simulators)
    assert traffic.count(("/api/staff", 401)) == 1
    assert traffic.count(("/oauth/token", 200)) == 2


def test_token_refused_again_after_renewal_is_an_auth_error() -> None:
    """A server that rejects every token must not make the connector loop for ever."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/oauth/token":
            return answer(200, {"access_token": f"t{len(seen)}", "token_type": "Bearer", "expires_in": 60})
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        return answer(401, {"error": "invalid_token"}, headers)

    with mock_source(handler) as source, pytest.raises(AuthError) as raised:
        list(source.read("staff"))
    assert "credentials refused (HTTP 401)" in str(raised.value)
    assert seen == ["/oauth/token", "/api/staff", "/oauth/token", "/api/staff"]


def test_token_without_lifetime_is_kept_and_pages_are_bounded_by_the_first() -> None:
    tokens: list[str] = []
    queries: list[dict[str, str]] = []
    pages = iter([{"next_cursor": "c1", "server_time_ms": 5}, {"next_cursor": None, "server_time_ms": 6}])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            tokens.append(f"t{len(tokens)}")
            return answer(200, {"access_token": tokens[-1], "token_type": "bearer"})
        assert request.headers["Authorization"] == "Bearer t0"
        queries.append(dict(request.url.params))
        return answer(200, {"items": [], **next(pages)})

    with mock_source(handler) as source:
        batches = list(source.read("staff", "4"))
    assert tokens == ["t0"]  # no expires_in: kept until the server refuses it
    assert queries == [
        {"limit": "500", "modified_after": "4"},
        {"limit": "500", "modified_after": "4", "modified_before": "5", "cursor": "c1"},
    ]
    assert [b.cursor for b in batches] == [None, "5"]  # the first page's server time, with the last page


def test_bad_client_secret_fails_fast_without_the_secret(simulators: SimulatorCluster) -> None:
    secret = "not-the-hr-secret-42"
    started = time.monotonic()
    with connector(simulators, secret=secret) as source, pytest.raises(AuthError) as raised:
        traffic = record_traffic(source)
        list(source.read("staff"))
    assert time.monotonic() - started < 1.0
    assert traffic == [("/oauth/token", 401)]  # not retried
    message = str(raised.value)
    assert message.startswith("hr: ") and "invalid_client" in message and "CAMPUSHUB_HR_CLIENT_SECRET" in message
    assert secret not in message and "/oauth/token" in message


def test_oauth_protocol_of_the_stand_in(simulators: SimulatorCluster) -> None:
    url = simulators.urls["hr"]
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    issued = httpx.post(f"{url}/oauth/token", data=form)
    assert issued.status_code == 200 and issued.headers["Cache-Control"] == "no-store"
    body = issued.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == TOKEN_LIFETIME and body["access_token"]
    basic = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert basic.status_code == 200 and basic.json()["access_token"] != body["access_token"]

    refused = httpx.post(f"{url}/oauth/token", data={**form, "client_secret": "wrong"})
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    grant = httpx.post(f"{url}/oauth/token", data={**form, "grant_type": "password"})
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")

    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {body['access_token']}"}):
        answer = httpx.get(f"{url}/api/staff", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert answer.json()["error"] == "invalid_token" and answer.json()["error_description"]
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{url}/api/staff", headers=bearer, params={"limit": 501}).status_code == 422
    wrong_stream = httpx.get(f"{url}/api/departments", headers=bearer, params={"limit": 1}).json()["next_cursor"]
    misused = httpx.get(f"{url}/api/staff", headers=bearer, params={"cursor": wrong_stream})
    assert (misused.status_code, misused.json()["error"]) == (400, "invalid_cursor")


def test_token_store_forgets_expired_tokens_and_stays_bounded() -> None:
    now = [0.0]
    store = TokenStore(lifetime=10.0, clock=lambda: now[0])
    first = store.issue()
    now[0] = 5.0
    second = store.issue()
    assert store.problem(first) is None and store.problem("forged") == "the access token is unknown"
    now[0] = 10.0
    assert store.problem(first) == "the access token has expired" and store.problem(second) is None
    now[0] = 15.0
    store.issue()  # issuing prunes what has expired
    assert len(store) == 1
    for _ in range(MAX_TOKENS + 5):
        store.issue()
    assert len(store) == MAX_TOKENS


# ---------------------------------------------------------------------------- faults
@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rate": 0.3},
        {"rate_limit_rate": 0.3, "retry_after": 0},
        {"drop_rate": 0.3},
        {"truncate_rate": 0.3},
        {"latency_ms": 20},
        {
            "error_rate": 0.1,
            "rate_limit_rate": 0.1,
            "retry_after": 0,
            "drop_rate": 0.1,
            "truncate_rate": 0.1,
            "latency_ms": 5,
        },
    ],
    ids=["5xx", "429", "drop", "truncate", "latency", "all"],
)
def test_faults_lose_nothing_and_duplicate_nothing(
    simulators: SimulatorCluster, knobs: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    set_faults(simulators, "hr", **knobs)
    with caplog.at_level(logging.WARNING, logger="campushub.connectors.base"):
        batches = pull(simulators, "staff", page_size=2)
    assert keys(batches) == expected_staff_keys(simulators)
    retried = any("retry" in r.getMessage() for r in caplog.records)
    assert retried == (set(knobs) != {"latency_ms"}), "every fault must strike at least once; latency never"
    assert not any(CLIENT_SECRET in r.getMessage() for r in caplog.records)


def test_retry_after_as_http_date_is_honoured(simulators: SimulatorCluster) -> None:
    set_faults(simulators, "hr", rate_limit_rate=1.0, retry_after=1, retry_after_as_date=True)
    started = time.monotonic()
    with connector(simulators, page_size=500) as source:
        traffic = record_traffic(source)

        def calm_after_first_429(response: httpx.Response) -> None:
            if response.status_code == 429:
                set_faults(simulators, "hr", rate_limit_rate=0.0)

        source.client.event_hooks["response"].append(calm_after_first_429)
        batches = list(source.read("staff"))
    # The date names a whole second more than one second ahead; the fast retry policy alone
    # would have come back within 50 ms.
    assert time.monotonic() - started >= 1.0
    assert [status for _, status in traffic] == [429, 200, 200]
    assert keys(batches) == expected_staff_keys(simulators)


def test_page_that_stays_malformed_fails_with_source_url_and_page(simulators: SimulatorCluster) -> None:
    set_faults(simulators, "hr", truncate_rate=1.0)
    with pytest.raises(MalformedPageError) as raised:
        pull(simulators, "staff")
    message = str(raised.value)
    assert message.startswith(f"hr: gave up after {FAST_RETRY.attempts} attempts")
    assert "/oauth/token" in message and "(token)" in message


def test_malformed_records_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate, page_size = 0.4, 2  # small pages: many page boundaries to repeat across
    set_faults(simulators, "hr", malformed_rate=rate)
    records = [r for b in pull(simulators, "staff", page_size=page_size) for r in b.records]
    world = simulators.world
    served: list[tuple[int, bool]] = []
    for page in range(1, -(-world.staff_count // page_size) + 1):
        first = (page - 1) * page_size
        if repeats_previous_page(world.seed, "staff", page, rate):
            served.append((first - 1, True))
        served += [(i, False) for i in range(first, min(first + page_size, world.staff_count))]
    assert len(records) == len(served) and sum(repeat for _, repeat in served) >= 2
    reasons = {
        "bad_check_digit": "idNumber: id number: check digit does not match",
        "impossible_date": "birthDate: '1985/02/30' is not a valid date (%Y/%m/%d)",
        "missing_key": "missing staffNo",
        "unknown_code": "gender: unknown code '未知'",
    }
    kinds_seen = set()
    for record, (index, repeat) in zip(records, served, strict=True):
        kind = malformed_kind(world.seed, "staff", index, rate, CORRUPTIBLE["staff"])
        expected = {reasons[kind]} if kind else set()
        if repeat and kind != "missing_key":  # a record without its key cannot be recognised again
            expected.add("duplicate: the same record was already sent")
        assert set(record.problems) == expected, (index, record.problems)
        assert record.data
        kinds_seen.add(kind)
    assert kinds_seen >= set(reasons), "every kind of breakage must be exercised"
