"""The `campushub` command line.

campushub simulate [--students N] [--changes N]   start the four stand-in source systems
campushub change N [--kinds ...]                  apply N random changes to running stand-ins
campushub fetch SOURCE STREAM [--cursor C]        pull one stream through its connector
campushub up                                      everything: stand-ins, first sync, API + hall, Dagster
campushub run                                     the main job once (see `run` below)
campushub serve [--port 8000] [--workers N]       the GraphQL API at /graphql
campushub token ROLE [--subject S] [--org CODE]   a development token for a demo user
campushub schema                                  print the GraphQL schema (SDL)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from campushub.connectors import SOURCES, SourceError, open_source


@dataclass
class StreamSummary:
    source: str
    stream: str
    records: int = 0
    pages: int = 0
    flagged: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    cursor: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        top = ", ".join(f"{reason} ×{n}" for reason, n in self.reasons.most_common(2))
        return (
            f"{self.source}/{self.stream}: {self.records} records in {self.pages} pages, "
            f"{self.flagged} flagged for quarantine{f' ({top})' if top else ''}, "
            f"cursor {self.cursor or '-'}, {self.seconds:.1f}s ({rate:,.0f}/s)"
        )


def fetch_stream(source_name: str, stream: str, cursor: str | None = None) -> StreamSummary:
    """Pull one stream to the end and count what came, without keeping the records."""
    summary = StreamSummary(source_name, stream, cursor=cursor)
    started = time.perf_counter()
    with open_source(source_name) as source:
        for batch in source.read(stream, cursor):
            summary.pages += 1
            summary.records += len(batch.records)
            for record in batch.records:
                if record.problems:
                    summary.flagged += 1
                    # Reasons name the field and rule, so group by the part before the value.
                    summary.reasons.update(problem.split(":")[0] for problem in record.problems)
            if batch.cursor is not None:
                summary.cursor = batch.cursor
    summary.seconds = time.perf_counter() - started
    return summary


def _load_env_file() -> None:
    """Read `.env` from the working directory, if any; real environment variables win."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a declared dependency
        return
    load_dotenv(".env", override=False)


def _simulator_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from campushub.simulators.settings import SimulatorSettings

    return SimulatorSettings.from_env(seed=args.seed, students=args.students)


def cmd_simulate(args: argparse.Namespace) -> int:
    from campushub.simulators.faults import FaultSettings
    from campushub.simulators.server import SimulatorCluster

    knobs = dict(fault.partition("=")[::2] for fault in args.fault)
    try:
        FaultSettings().update(knobs)  # refuse bad knobs before anything starts
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ports = {} if args.free_ports else None
    cluster = SimulatorCluster(_simulator_settings(args), host=args.host, ports=ports).start()
    if args.changes:
        cluster.world.changes.apply(args.changes)
    for name in cluster.services:
        cluster.faults(name).update(knobs)
    world = cluster.world
    print(
        f"stand-in systems up: {world.student_count} students, {world.staff_count} staff, "
        f"{world.grade_count} grades, {world.base_bill_count} bills, {world.base_transaction_seq_end} card transactions"
    )
    for name, url in cluster.urls.items():
        print(f"  {name:9} {url}   (API description: {url}/docs)")
    print("URLS " + json.dumps(cluster.urls))  # one machine-readable line, for scripts
    print("Ctrl-C stops them.", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    import httpx

    url = args.url or os.environ.get("CAMPUSHUB_ACADEMIC_URL", "http://127.0.0.1:8101")
    body: dict[str, object] = {"count": args.count}
    if args.kinds:
        body["kinds"] = args.kinds
    response = httpx.post(f"{url}/_admin/changes", json=body, timeout=60)
    response.raise_for_status()
    changes = response.json()["changes"]
    for kind, n in Counter(c["kind"] for c in changes).most_common():
        print(f"{kind}: {n}")
    print(f"{len(changes)} records touched")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch_stream(args.source, args.stream, args.cursor).line())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: start the stand-ins, sync everything into the unified
    layer through the Dagster pipeline, and print what each asset did."""
    from campushub.orchestration.mainjob import run_main_job
    from campushub.simulators.server import SimulatorCluster
    from campushub.simulators.settings import DEFAULT_PORTS

    settings = _simulator_settings(args)
    cluster = SimulatorCluster(settings, host="127.0.0.1", ports={} if args.free_ports else DEFAULT_PORTS).start()
    try:
        _point_connectors_at(cluster.urls, settings)
        return 0 if run_main_job(print) else 1
    finally:
        cluster.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """The GraphQL API on uvicorn; the schema is migrated to head first."""
    from campushub.graphql.serving import serve
    from campushub.models.engine import make_engine
    from campushub.models.migrate import upgrade

    upgrade(make_engine())
    return serve(args.host, args.port, args.workers)


def cmd_token(args: argparse.Namespace) -> int:
    """Print a development token: for the demo user of ROLE, or for --subject/--org given."""
    from campushub.graphql.auth import Principal, mint_token
    from campushub.graphql.demo import demo_users
    from campushub.graphql.permissions import ROLES
    from campushub.models.engine import make_engine

    if args.role not in ROLES:
        print(f"error: unknown role {args.role!r}; roles: {', '.join(ROLES)}", file=sys.stderr)
        return 2
    if args.subject:
        principal = Principal(subject=args.subject, role=args.role, org_unit=args.org)
    else:
        with make_engine().connect() as connection:
            principal = demo_users(connection).get(args.role)  # type: ignore[assignment]
        if principal is None:
            print(f"error: no demo {args.role} in the unified layer yet: run `campushub run` first", file=sys.stderr)
            return 2
    print(mint_token(principal))
    if args.verbose:
        print(
            f"# {principal.role} {principal.subject} {principal.name or ''} {principal.org_unit or ''}", file=sys.stderr
        )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the API's schema as SDL: what `campushub/graphql/schema.graphql` must hold."""
    from campushub.graphql.sdl import schema_sdl

    sys.stdout.write(schema_sdl())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The whole hub on embedded defaults (see campushub/stack.py); Ctrl-C stops it all."""
    from campushub.simulators.server import SimulatorCluster
    from campushub.simulators.settings import DEFAULT_PORTS
    from campushub.stack import run_stack

    settings = _simulator_settings(args)
    clusters: list[SimulatorCluster] = []

    def start_stand_ins() -> dict[str, str]:
        clusters.append(SimulatorCluster(settings, host="127.0.0.1", ports=DEFAULT_PORTS).start())
        _point_connectors_at(clusters[0].urls, settings)
        return clusters[0].urls

    try:
        return run_stack(start_stand_ins, lambda line: print(line, flush=True))
    finally:
        for cluster in clusters:
            cluster.stop()


def cmd_db(args: argparse.Namespace) -> int:
    from campushub.models.engine import make_engine
    from campushub.models.migrate import upgrade

    engine = make_engine()
    upgrade(engine, args.revision)
    print(f"schema of {engine.url.render_as_string(hide_password=True)} is at {args.revision}")
    return 0


def _point_connectors_at(urls: dict[str, str], settings) -> None:  # type: ignore[no-untyped-def]
    """Configure the connectors for stand-ins this process started (unless already configured)."""
    values = {
        "CAMPUSHUB_ACADEMIC_API_KEY": settings.academic_api_key,
        "CAMPUSHUB_HR_CLIENT_ID": settings.hr_client_id,
        "CAMPUSHUB_HR_CLIENT_SECRET": settings.hr_client_secret,
        "CAMPUSHUB_FINANCE_USER": settings.finance_user,
        "CAMPUSHUB_FINANCE_PASSWORD": settings.finance_password,
        "CAMPUSHUB_CARD_APP_KEY": settings.card_app_key,
        "CAMPUSHUB_CARD_APP_SECRET": settings.card_app_secret,
    }
    values.update({f"CAMPUSHUB_{name.upper()}_URL": url for name, url in urls.items()})
    for name, value in values.items():
        os.environ[name] = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campushub", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def world_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--students", type=int, default=5_000, help="scale (university profile: 50000)")
        command.add_argument("--seed", type=int, default=2026)

    simulate = commands.add_parser("simulate", help="start the four stand-in source systems")
    world_options(simulate)
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--free-ports", action="store_true", help="serve on free ports instead of 8101-8104")
    simulate.add_argument("--changes", type=int, default=0, help="apply this many random changes at start")
    simulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="a fault knob for every system, e.g. error_rate=0.1, rate_limit_rate=0.05, latency_ms=50,\n"
        "drop_rate, truncate_rate, malformed_rate, retry_after, retry_after_as_date (repeatable;\n"
        "change them later with PUT /_admin/faults)",
    )
    simulate.set_defaults(handler=cmd_simulate)

    change = commands.add_parser("change", help="apply random changes to running stand-ins")
    change.add_argument("count", type=int)
    change.add_argument("--kinds", nargs="*", help="limit to these change kinds")
    change.add_argument("--url", help="any stand-in's base URL (default: $CAMPUSHUB_ACADEMIC_URL)")
    change.set_defaults(handler=cmd_change)

    fetch = commands.add_parser("fetch", help="pull one stream through its connector and summarise it")
    fetch.add_argument("source", choices=sorted(SOURCES))
    fetch.add_argument("stream")
    fetch.add_argument("--cursor", help="incremental cursor from an earlier fetch")
    fetch.set_defaults(handler=cmd_fetch)

    db = commands.add_parser("db", help="the unified layer's schema (Alembic migrations)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="apply migrations to $CAMPUSHUB_DATABASE_URL")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_upgrade.set_defaults(handler=cmd_db)

    run = commands.add_parser("run", help="the main job on embedded defaults")
    world_options(run)
    run.add_argument("--free-ports", action="store_true", help="serve the stand-ins on free ports")
    run.set_defaults(handler=cmd_run)

    up = commands.add_parser("up", help="everything on embedded defaults: stand-ins, sync, API, hall, Dagster")
    world_options(up)
    up.set_defaults(handler=cmd_up)

    serve = commands.add_parser("serve", help="the GraphQL API (GraphiQL too, in development)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve)

    token = commands.add_parser("token", help="mint a development token")
    token.add_argument("role", help="a role of permissions.yaml: student, staff, college_officer, ...")
    token.add_argument("--subject", help="学号 or 工号 (default: the role's demo user)")
    token.add_argument("--org", help="org unit code, for scoped roles with --subject")
    token.add_argument("-v", "--verbose", action="store_true", help="say who the token is for (on stderr)")
    token.set_defaults(handler=cmd_token)

    schema = commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    schema.set_defaults(handler=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _load_env_file()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
