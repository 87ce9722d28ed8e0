"""The GraphQL API under load at the university profile, next to a same-run baseline.

    python benchmarks/bench_api.py --students 50000 [--database sqlite postgresql] [--keep DIR]

For each database kind a unified layer is built by the main job (`campushub run`) — into a
temporary SQLite file, or a scratch PostgreSQL database dropped afterwards. With `--keep DIR`
the built layer stays under DIR (and its PostgreSQL database stays too) and later runs reuse it:
building 50,000 students takes many minutes.

Prefill: the API is served as `campushub serve` serves it (uvicorn, in a separate process,
`--workers` processes), and 32 concurrent clients fill the enrollment certificate for random
students over real HTTP on loopback. The baseline, measured in the same run, is the same answer
from a minimal Starlette endpoint on the same HTTP stack, served the same way: the same
bearer-token check, ONE hand-written SQL statement, the same audit row written before the
answer, and the same JSON, run where the API runs its operations (on the event loop:
`campushub.graphql.execution.Executor`) — so the ratio is what GraphQL and the hub's general
loaders cost. Both answers are compared field by field on a sample, and the audit rows
counted: one per request, no fewer.

Two kinds of load, each on both servers:
- saturation (closed loop): each of the 32 clients sends its next request as soon as the last
  is answered — the most requests per second the server gives, and the latency at that rate;
- the goal's rate (open loop, `--rate`, 800 req/s): the 32 connections send on a fixed schedule
  and latency counts from each request's scheduled time, so a server that falls behind is
  charged for the wait (no coordinated omission). With closed-loop clients, p99 <= 25 ms and
  >= 800 req/s could only hold together above 32 / 0.025 s = 1,280 req/s (Little's law), so the
  latency goal is measured where the issue puts it: at 800 req/s.

The load generator is asyncio over raw sockets (keep-alive HTTP/1.1, pre-built requests): it
runs on the same machine and competes with the server for CPU, so its CPU use is reported
next to the server's.

Department page: 100 students with majors, classes and fee status, as the college officer and
as the finance officer; SQL statements are counted in-process on the engine (every statement
a request sends, its audit insert included), latency measured over HTTP against the server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, bindparam, create_engine, event, exists, func, select, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campushub.graphql.app import REQUEST_TIMEOUT_S, ApiSettings, api_engine, create_app, freeze_startup_heap
from campushub.graphql.audit import AuditTrail
from campushub.graphql.auth import AuthError, Principal, mint_token, verify_token
from campushub.graphql.demo import demo_users
from campushub.graphql.execution import Executor, HeldConnection
from campushub.graphql.serving import serve
from campushub.graphql.sqlite_writes import CHECKPOINT_THREAD
from campushub.models.engine import make_engine, reading_only
from campushub.models.landing import QuarantinedRecord, SyncState
from campushub.models.protect import decrypt_id
from campushub.models.record_checks import record_problems
from campushub.models.service import AuditEntry
from campushub.models.sources import FRESHNESS
from campushub.models.unified import ClassGroup, Conflict, FieldProvenance, Major, OrgUnit, Person, Student
from campushub.reference.identity import id_document_disagreement

PROJECT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("CAMPUSHUB_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FORM_ID = "enrollment_certificate"
PREFILL = f'{{ prefill(formId: "{FORM_ID}") {{ fields {{ name value source asOf quality }} }} }}'
DEPARTMENT_PAGE = (
    "{ students(first: 100) { edges { node { studentNo name major { name } classGroup { name } "
    "feeStatus { outstandingFen settled } } } } }"
)
GOAL_P99_MS, GOAL_RPS, GOAL_STATEMENTS = 25.0, 800.0, 5


# ------------------------------------------------------------------------ the built hub
@dataclass(frozen=True, slots=True)
class Hub:
    kind: str
    url: str  # the unified layer's database URL
    directory: Path  # its data folder: the ID-number key it was encrypted with


def _main_job(url: str, directory: Path, students: int) -> None:
    """Build the unified layer exactly as `campushub run` does, with its own data folder."""
    env = {
        **_env(),
        "CAMPUSHUB_DATABASE_URL": url,
        "CAMPUSHUB_DATA_DIR": str(directory),
        "DAGSTER_HOME": str(directory / "dagster"),
    }
    (directory / "dagster").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "campushub.cli", "run", "--students", str(students), "--free-ports"]
    print(f"# building the unified layer ({students:,} students) ...", flush=True)
    started = time.perf_counter()
    with (directory / "build.log").open("w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=directory)
    print(f"# built in {time.perf_counter() - started:,.0f} s", flush=True)


@contextmanager
def built_hub(kind: str, students: int, keep: Path | None) -> Iterator[Hub]:
    directory = keep / f"{kind}-{students}" if keep else Path(tempfile.mkdtemp(prefix=f"bench-api-{kind}-"))
    ready = directory / "ready"
    if ready.exists():
        yield Hub(kind, ready.read_text().strip(), directory)
        return
    directory.mkdir(parents=True, exist_ok=True)
    database = f"campushub_bench_{students}_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'campushub.db'}"
    else:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
        _pg_admin(f'CREATE DATABASE "{database}"')
    try:
        _main_job(url, directory, students)
        if keep:
            ready.write_text(url)
        yield Hub(kind, url, directory)
    finally:
        if not keep:
            if kind == "postgresql":
                _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            shutil.rmtree(directory, ignore_errors=True)


def _pg_admin(statement: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(statement))
    admin.dispose()


def _env(**extra: str) -> dict[str, str]:
    """Child processes import this checkout's code, whatever is installed."""
    path = os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


# ------------------------------------------------------------------------------ serving
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """CPU used so far by the server: the uvicorn supervisor and its workers."""
        total = 0.0
        parent = psutil.Process(self.process.pid)
        for process in [parent, *parent.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


@contextmanager
def serving(name: str, command: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    process = subprocess.Popen(command, env=env, cwd=PROJECT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start within 60 s") from None
                time.sleep(0.2)
        yield Server(name, port, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def api_command(port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "campushub.cli", "serve", "--port", str(port), "--workers", str(workers)]


def baseline_command(port: int, workers: int) -> list[str]:
    """The baseline app, served as `campushub serve` serves the API (its workers, its sockets)."""
    return [sys.executable, __file__, "--serve-baseline", str(port), "--workers", str(workers)]


# ---------------------------------------------------------------------------- baseline
CERTIFICATE_PERSON_FIELDS = ("name", "sex", "birth_date", "id_type", "id_number")
PROVENANCE_OF = {"id_type": "id_number"}  # the document type comes with its number
CERTIFICATE_STUDENT_FIELDS = {  # form field -> column
    "student_no": "student_no",
    "college": "college",
    "major": "major",
    "class": "class",
    "education_level": "education_level",
    "entry_date": "entry_date",
    "expected_graduation": "expected_graduation",
    "status": "status",
}


SUBJECT = bindparam("subject")


def _baseline_statement() -> Any:
    """Everything the enrollment certificate needs, in one statement: the student, their golden
    record, one row per field provenance, and the quality facts as subqueries."""
    college = OrgUnit.__table__.alias("college")
    provenance = FieldProvenance.__table__
    conflicted = exists().where(Conflict.person_id == Person.id, Conflict.status == "open")
    quarantined = exists().where(
        QuarantinedRecord.source == "academic",
        QuarantinedRecord.stream == "students",
        QuarantinedRecord.source_key == Student.student_no,
        QuarantinedRecord.resolved_at.is_(None),
    )
    synced = select(func.min(SyncState.last_success_at)).where(SyncState.source == "academic").scalar_subquery()
    return (
        select(
            *(column.label(f"p_{column.name}") for column in Person.__table__.columns),
            *(column.label(f"s_{column.name}") for column in Student.__table__.columns),
            college.c.name.label("college"),
            Major.name.label("major"),
            ClassGroup.name.label("class"),
            provenance.c.field.label("prov_field"),
            provenance.c.source.label("prov_source"),
            provenance.c.source_key.label("prov_key"),
            provenance.c.as_of.label("prov_as_of"),
            conflicted.label("conflicted"),
            quarantined.label("quarantined"),
            synced.label("synced"),
        )
        .join(Person, Person.id == Student.person_id)
        .outerjoin(college, college.c.id == Student.college_id)
        .outerjoin(Major, Major.id == Student.major_id)
        .outerjoin(ClassGroup, ClassGroup.id == Student.class_id)
        .outerjoin(
            provenance,
            (provenance.c.entity == "person")
            & (provenance.c.entity_id == Person.id)
            & provenance.c.field.in_(CERTIFICATE_PERSON_FIELDS),
        )
        .where(Student.student_no == SUBJECT, Student.deleted_at.is_(None))
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


class BaselineApp:
    """The enrollment certificate without GraphQL: what any implementation must do."""

    def __init__(self) -> None:
        self.engine = api_engine()  # pooled as the API pools them
        self.statement = _baseline_statement()
        # Run where the API runs its operations (the event loop, unless CAMPUSHUB_API_THREADS says).
        self.executor = Executor.from_env(REQUEST_TIMEOUT_S)
        self._writers = threading.local()
        self._all_writers: list[HeldConnection] = []

    def _audit_writer(self) -> HeldConnection:
        """As the API writes audit rows: on a connection kept for them, in autocommit (one atomic
        statement) — one per thread the answers run on."""
        writer = getattr(self._writers, "held", None)
        if writer is None:
            writer = self._writers.held = HeldConnection(self.engine)
            self._all_writers.append(writer)
        return writer

    def close(self) -> None:
        for writer in self._all_writers:
            writer.close()

    def answer(self, subject: str, request_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection, reading_only(connection):  # as the API reads for queries
            rows = connection.execute(self.statement, {"subject": subject}).mappings().all()
            if not rows:
                return {"errors": [{"message": "no record of you"}]}
            first = rows[0]
            person = {key[2:]: value for key, value in first.items() if key.startswith("p_")}
            student = {key[2:]: value for key, value in first.items() if key.startswith("s_")}
            provenance = {row["prov_field"]: row for row in rows if row["prov_field"] is not None}
            person_flagged = bool(first["conflicted"] or record_problems("person", person))
            synced = first["synced"]
            overdue = synced is None or dt.datetime.now(dt.UTC) - synced > FRESHNESS["academic"]
            student_flagged = bool(first["quarantined"] or overdue or record_problems("student", student))

            fields: list[dict[str, Any]] = []
            for name in CERTIFICATE_PERSON_FIELDS:
                flagged = person_flagged
                if name == "id_number":
                    number = decrypt_id(person["id_number_cipher"]) if person["id_number_cipher"] else None
                    value = number
                    flagged = flagged or bool(
                        number
                        and id_document_disagreement(person["id_type"], number, person["birth_date"], person["sex"])
                    )
                else:
                    value = person[name]
                    value = value.isoformat() if hasattr(value, "isoformat") else value
                row = provenance.get(PROVENANCE_OF.get(name, name))
                fields.append(
                    _field(
                        name,
                        value,
                        row["prov_source"] if row else "hub",
                        row["prov_as_of"] if row else person["updated_at"],
                        flagged,
                    )
                )
            for name, column in CERTIFICATE_STUDENT_FIELDS.items():
                value = first[column] if column in ("college", "major", "class") else student[column]
                value = value.isoformat() if hasattr(value, "isoformat") else value
                fields.append(_field(name, value, "academic", student["source_updated_at"], student_flagged))

            audit = AuditTrail(request_id, subject, "student")
            released = [entry["name"] for entry in fields if entry["quality"] != "MISSING"]
            audit.read(person["id"], "form", released, f"form:{FORM_ID}")
        with self._audit_writer().use() as writer:  # its own INSERT, before the answer
            audit.write(writer)
        return {"data": {"prefill": {"fields": fields}}}

    async def handle(self, request: Request) -> Response:
        await request.body()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise AuthError("missing bearer token")
            principal = verify_token(token.strip())
        except AuthError as error:
            return JSONResponse({"errors": [{"message": str(error)}]}, 401)
        request_id = str(uuid.uuid4())
        body = await self.executor.run(self.answer, principal.subject, request_id)
        return JSONResponse(body, headers={"X-Request-ID": request_id})


def _field(name: str, value: Any, source: str, as_of: Any, flagged: bool) -> dict[str, Any]:
    if value is None:
        return {"name": name, "value": None, "source": None, "asOf": None, "quality": "MISSING"}
    quality = "FLAGGED" if flagged else "OK"
    return {"name": name, "value": str(value), "source": source, "asOf": _iso(as_of), "quality": quality}


def baseline_app() -> Starlette:
    app = BaselineApp()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        freeze_startup_heap()  # as the API's workers do
        yield
        app.close()

    return Starlette(routes=[Route("/graphql", app.handle, methods=["POST"])], lifespan=lifespan)


# ----------------------------------------------------------------------- load generator
@dataclass
class LoadResult:
    latencies: list[float]
    seconds: float
    client_cpu: float
    server_cpu: float
    failures: list[str]
    lateness: list[float]  # open loop: the load generator's own delay in sending (`Driven`)
    # Merged from rounds: each round's own p99 (ms) — whether a miss is one bad round or all of them.
    p99_by_round: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return _percentile(self.latencies, q)

    def late_percentile(self, q: float) -> float:
        return _percentile(self.lateness, q)

    def share_later_than(self, milliseconds: float) -> float:
        """Of the answers, the share that took longer than `milliseconds`: how much of the load a
        p99 speaks for (a p99 over the goal may be a few stalls or a slow server)."""
        limit = milliseconds / 1000
        return sum(latency > limit for latency in self.latencies) / len(self.latencies) if self.latencies else 0.0


def _percentile(seconds: list[float], q: float) -> float:
    """In milliseconds; 0 for no values."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def http_request(port: int, token: str, query: str) -> bytes:
    body = json.dumps({"query": query}).encode()
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


@dataclass
class Driven:
    latencies: list[float]
    # Open loop: how late the generator woke to send a request it had a free connection for — its
    # own delay, from a machine too busy to run it on time.
    lateness: list[float]
    failures: list[str]
    seconds: float


async def _drive(port: int, requests: Sequence[bytes], concurrency: int, rate: float | None) -> Driven:
    """Send `requests` over `concurrency` connections: back to back, or at `rate` per second in
    all (then each latency counts from the request's scheduled time). Every connection is open
    before the first request leaves: these are keep-alive clients, whose set-up is no request's
    latency (on a busy machine a fixed head start was sometimes too short, and the first
    requests of a round queued behind it)."""
    connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)))
    driven = Driven([], [], [], 0.0)
    queue = iter(requests)
    tickets = itertools.count()
    began = time.perf_counter()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for request in queue:  # one shared iterator: the clients split the bounded work
                if rate is None:
                    started = time.perf_counter()
                else:
                    started = began + next(tickets) / rate
                    ahead = started - time.perf_counter()
                    if ahead > 0:  # (else the request waited for a connection: the server's delay)
                        await asyncio.sleep(ahead)
                        driven.lateness.append(time.perf_counter() - started)
                writer.write(request)
                async with asyncio.timeout(30):
                    status, body = await _read_response(reader)
                driven.latencies.append(time.perf_counter() - started)
                if status != 200 or b'"errors"' in body:
                    driven.failures.append(f"{status}: {body[:200].decode(errors='replace')}")
        finally:
            writer.close()

    await asyncio.gather(*(client(reader, writer) for reader, writer in connections))
    driven.seconds = time.perf_counter() - began
    return driven


def load(server: Server, requests: Sequence[bytes], concurrency: int, rate: float | None = None) -> LoadResult:
    client_before, server_before = time.process_time(), server.cpu_seconds()
    driven = asyncio.run(_drive(server.port, requests, concurrency, rate))
    return LoadResult(
        driven.latencies,
        driven.seconds,
        time.process_time() - client_before,
        server.cpu_seconds() - server_before,
        driven.failures,
        driven.lateness,
    )


async def _fetch(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await _read_response(reader)
    finally:
        writer.close()


def fetch(port: int, request: bytes) -> dict[str, Any]:
    status, body = asyncio.run(_fetch(port, request))
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return json.loads(body)


# --------------------------------------------------------------------------- measuring
def student_tokens(engine: Engine, count: int, seed: int) -> list[str]:
    query = select(Student.student_no).where(Student.deleted_at.is_(None), Student.person_id.is_not(None))
    with engine.connect() as connection:
        numbers = sorted(connection.execute(query).scalars())
    chosen = random.Random(seed).sample(numbers, min(count, len(numbers)))
    return [mint_token(Principal(subject=number, role="student")) for number in chosen]


def audit_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def compare_answers(api: Server, baseline: Server, tokens: Sequence[str]) -> int:
    """Fields on which the baseline's answer differs from the API's (expected: none)."""
    differences = 0
    for token in tokens:
        ours = fetch(api.port, http_request(api.port, token, PREFILL))
        theirs = fetch(baseline.port, http_request(baseline.port, token, PREFILL))
        if "errors" in ours or "errors" in theirs:
            raise RuntimeError(f"a sample request failed: {ours.get('errors') or theirs.get('errors')}")
        for mine, other in zip(ours["data"]["prefill"]["fields"], theirs["data"]["prefill"]["fields"], strict=True):
            if mine != other:
                differences += 1
                print(f"#   differs: {mine} != {other}", file=sys.stderr)
    return differences


def prefill_load(
    api: Server, baseline: Server, engine: Engine, tokens: Sequence[str], args: argparse.Namespace
) -> dict[str, LoadResult]:
    """Each server under saturation and at `args.rate`: {"api", "baseline", "api@rate", "baseline@rate"}."""
    rng = random.Random(args.seed)
    results: dict[str, list[LoadResult]] = {}
    for server in (api, baseline):  # warm-up: connection pools, caches, the document cache
        warm = [http_request(server.port, rng.choice(tokens), PREFILL) for _ in range(args.warmup)]
        load(server, warm, args.concurrency)
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits both alike
        for rate in (None, args.rate):
            for name, server in (("baseline", baseline), ("api", api)):
                batch = [http_request(server.port, rng.choice(tokens), PREFILL) for _ in range(args.requests)]
                before = audit_rows(engine)
                result = load(server, batch, args.concurrency, rate)
                written = audit_rows(engine) - before
                if written != args.requests:
                    result.failures.append(f"{written} audit rows for {args.requests} requests")
                results.setdefault(name if rate is None else f"{name}@rate", []).append(result)
    return {name: _merged(runs) for name, runs in results.items()}


def _merged(runs: list[LoadResult]) -> LoadResult:
    return LoadResult(
        [latency for run in runs for latency in run.latencies],
        sum(run.seconds for run in runs),
        sum(run.client_cpu for run in runs),
        sum(run.server_cpu for run in runs),
        [failure for run in runs for failure in run.failures],
        [late for run in runs for late in run.lateness],
        [run.percentile(0.99) for run in runs],
    )


@dataclass(frozen=True, slots=True)
class PageFigures:
    role: str
    rows: int  # 100, unless the college is smaller (small scales)
    statements: int
    p50_ms: float
    p99_ms: float


def department_page(engine: Engine, api: Server, repeats: int) -> list[PageFigures]:
    """Statements counted in-process through the app; latency over HTTP against the server."""
    with engine.connect() as connection:
        users = demo_users(connection)
    app = create_app(engine, ApiSettings(development=False))
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Not the request's: on SQLite a background thread checkpoints the log after writes.
        if threading.current_thread().name != CHECKPOINT_THREAD:
            statements.append(statement)

    async def in_process(token: str) -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://campushub") as client:
            headers = {"Authorization": f"Bearer {token}"}
            await client.post("/graphql", json={"query": DEPARTMENT_PAGE}, headers=headers)  # the document cache
            event.listen(engine, "before_cursor_execute", count)
            try:
                statements.clear()
                response = await client.post("/graphql", json={"query": DEPARTMENT_PAGE}, headers=headers)
            finally:
                event.remove(engine, "before_cursor_execute", count)
            return response.json()

    figures = []
    for role in ("college_officer", "finance_officer"):
        token = mint_token(users[role])
        answer = asyncio.run(in_process(token))
        rows = len(answer["data"]["students"]["edges"]) if answer.get("data") else 0
        if answer.get("errors") or not rows:
            raise RuntimeError(f"department page as {role}: {str(answer)[:300]}")
        if os.environ.get("BENCH_SHOW_SQL"):
            for statement in statements:
                print(f"#   {role}: {' '.join(statement.split())[:160]}", file=sys.stderr)
        request = http_request(api.port, token, DEPARTMENT_PAGE)
        driven = asyncio.run(_drive(api.port, [request] * repeats, 1, None))  # one keep-alive client
        if driven.failures:
            raise RuntimeError(f"department page as {role} over HTTP: {driven.failures[0]}")
        timings = sorted(latency * 1000 for latency in driven.latencies)
        figures.append(
            PageFigures(
                role, rows, len(statements), statistics.median(timings), timings[int(0.99 * (len(timings) - 1))]
            )
        )
    return figures


def yardstick_ms() -> float:
    """A fixed pure-Python loop, best of three: how fast this machine runs Python right now. On a
    shared machine it moves from day to day, and every figure here moves with it."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        sum(range(20_000_000))
        timings.append(time.perf_counter() - started)
    return min(timings) * 1000


def bench(hub: Hub, args: argparse.Namespace) -> None:
    print(f"# {hub.kind}: yardstick (sum(range(2*10**7)), best of 3) {yardstick_ms():.0f} ms")
    engine = make_engine(hub.url)
    env = _env(
        CAMPUSHUB_DATABASE_URL=hub.url,
        CAMPUSHUB_DATA_DIR=str(hub.directory),
        CAMPUSHUB_ENV="production",
        CAMPUSHUB_JWT_SECRET=os.environ["CAMPUSHUB_JWT_SECRET"],
    )
    api_port, baseline_port = _free_port(), _free_port()
    tokens = student_tokens(engine, args.students_sampled, args.seed)
    with (
        serving("api", api_command(api_port, args.workers), env, api_port) as api,
        serving("baseline", baseline_command(baseline_port, args.workers), env, baseline_port) as baseline,
    ):
        differences = compare_answers(api, baseline, tokens[: args.compare])
        results = prefill_load(api, baseline, engine, tokens, args)
        pages = department_page(engine, api, args.page_repeats)
    engine.dispose()
    report(hub.kind, args, differences, results, pages)


def report(
    kind: str, args: argparse.Namespace, differences: int, results: dict[str, LoadResult], pages: list[PageFigures]
) -> None:
    requests = args.requests * args.rounds
    print(f"\n## {kind}: prefill({FORM_ID}), {args.concurrency} clients, {args.workers} uvicorn workers")
    for title, suffix in (("saturation: closed loop", ""), (f"open loop at {args.rate:,.0f} req/s offered", "@rate")):
        api, baseline = results[f"api{suffix}"], results[f"baseline{suffix}"]
        print(f"# {title}")
        late = f"> {GOAL_P99_MS:.0f} ms"
        print(
            f"{'':10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {late:>8} {'req/s':>8} {'server CPU':>11} "
            f"{'client CPU':>11}"
        )
        for name, result in (("graphql", api), ("baseline", baseline)):
            print(
                f"{name:10} {result.percentile(0.50):>8.2f} {result.percentile(0.90):>8.2f} "
                f"{result.percentile(0.99):>8.2f} {result.share_later_than(GOAL_P99_MS):>8.2%} {result.rps:>8.0f} "
                f"{result.server_cpu / result.seconds:>10.0%} {result.client_cpu / result.seconds:>10.0%}"
            )
        print(
            f"ratio      {api.percentile(0.50) / baseline.percentile(0.50):>8.2f} "
            f"{api.percentile(0.90) / baseline.percentile(0.90):>8.2f} "
            f"{api.percentile(0.99) / baseline.percentile(0.99):>8.2f} {'':>8} {api.rps / baseline.rps:>8.2f}"
            f"   (graphql / baseline; '{late}': the share of answers later than the goal's p99; "
            "CPU as a share of one core)"
        )
        print(
            f"server CPU per request: graphql {api.server_cpu / requests * 1000:.2f} ms, "
            f"baseline {baseline.server_cpu / requests * 1000:.2f} ms; {requests:,} requests each"
        )
        if len(api.p99_by_round) > 1:
            print(
                "p99 by round (ms): "
                + "; ".join(
                    f"{name} " + ", ".join(f"{p99:.1f}" for p99 in result.p99_by_round)
                    for name, result in (("graphql", api), ("baseline", baseline))
                )
            )
        if suffix:
            print(
                "the load generator's own delay in sending, over the requests that had a free connection before "
                f"their time: p99 {api.late_percentile(0.99):.2f} ms of {len(api.lateness):,} in graphql's runs, "
                f"{baseline.late_percentile(0.99):.2f} ms of {len(baseline.lateness):,} in the baseline's — a "
                "machine too busy to run the generator on time; it counts in the latency"
            )
        failures = api.failures + baseline.failures
        if failures:
            print(f"FAILURES ({len(failures)}): {failures[:3]}")
    print(f"{args.compare} answers compared field by field: {differences} fields differ")
    paced = results["api@rate"]
    # At the goal's rate the server must keep up (allowing the schedule's own jitter) and answer in time.
    holds = args.rate >= GOAL_RPS and paced.rps >= 0.98 * args.rate and paced.percentile(0.99) <= GOAL_P99_MS
    print(
        f"goal p99 <= {GOAL_P99_MS:.0f} ms at >= {GOAL_RPS:.0f} req/s: {'holds' if holds else 'MISSED'} "
        f"(p99 {paced.percentile(0.99):.1f} ms at {paced.rps:,.0f} req/s)"
    )
    print(f"\n## {kind}: department page, 100 students with major, class and fee status")
    for page in pages:
        verdict = "holds" if page.statements <= GOAL_STATEMENTS else "MISSED"
        print(
            f"{page.role:16} {page.rows} students: {page.statements} SQL statements "
            f"(goal <= {GOAL_STATEMENTS}: {verdict}), "
            f"p50 {page.p50_ms:.1f} ms, p99 {page.p99_ms:.1f} ms over HTTP, one client"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--keep", type=Path, help="keep built layers here and reuse them on later runs")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default: one per core of two)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=GOAL_RPS, help="open-loop rate, req/s in all")
    parser.add_argument("--requests", type=int, default=10_000, help="per round and server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--students-sampled", type=int, default=5_000, help="random students to sign in as")
    parser.add_argument("--compare", type=int, default=50, help="answers compared field by field")
    parser.add_argument("--page-repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--build-only", action="store_true", help="with --keep: build the layers, measure nothing")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the baseline's server
    args = parser.parse_args()
    if args.serve_baseline:
        sys.exit(serve("127.0.0.1", args.serve_baseline, args.workers, app="bench_api:baseline_app"))
    if args.build_only and not args.keep:
        parser.error("--build-only needs --keep")

    # One signing secret for this run, shared with the servers it starts.
    os.environ.setdefault("CAMPUSHUB_JWT_SECRET", secrets.token_urlsafe(48))
    print(f"# {os.cpu_count()} cores; load generator: asyncio, raw keep-alive HTTP/1.1 on loopback")
    for kind in args.database:
        with built_hub(kind, args.students, args.keep) as hub:
            if not args.build_only:
                bench(hub, args)


if __name__ == "__main__":
    main()
