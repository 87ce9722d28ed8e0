"""Instructions a prefill costs, counted: repeatable whatever else the machine is doing.

    python benchmarks/bench_api_instructions.py --students 50000 [--database sqlite postgresql] [--keep DIR]

The load benchmark (`bench_api.py`) times the API over HTTP on a shared 2-core machine, where a
noisy neighbour moves every figure. Here the API's ASGI app — and the baseline's, the same
answer without GraphQL (`bench_api.BaselineApp`) — is called in-process, one request after
another, for random students of a layer built as `bench_api.py` builds it, under valgrind's
callgrind, which counts the instructions the process executes. Each app is run twice, with 50
and with 550 requests after the same warm-up; the difference over 500 is what one request
costs, start-up and warm-up cancelling out. What it leaves out: HTTP (uvicorn), the load
generator, and the database server's own work on PostgreSQL (SQLite's is in-process, so
counted). Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The sibling benchmark: its built layers, its load's request and its baseline app.
import bench_api

FEW, MANY = 50, 550
SAMPLED_STUDENTS = 100  # each one's token verified during the warm-up, then served from the cache


def _scope(token: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"campushub"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _drive(app: Any, tokens: list[str], requests: int) -> None:
    body = bench_api.http_request(0, tokens[0], bench_api.PREFILL).split(b"\r\n\r\n", 1)[1]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def one(token: str) -> None:
        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(_scope(token, body), receive, send)
        if statuses != [200]:
            raise RuntimeError(f"a prefill answered {statuses}")

    for token in tokens:  # warm-up: connections, statements, the token cache
        await one(token)
    for n in range(requests):
        await one(tokens[n % len(tokens)])


def drive(which: str, requests: int) -> None:
    """In the measured process: `requests` prefills through the API's app or the baseline's."""
    from campushub.graphql.app import create_app
    from campushub.models.engine import make_engine

    engine = make_engine(os.environ["CAMPUSHUB_DATABASE_URL"])
    tokens = bench_api.student_tokens(engine, SAMPLED_STUDENTS, seed=2026)
    engine.dispose()
    app = create_app() if which == "api" else bench_api.baseline_app()
    asyncio.run(_drive(app, tokens, requests))


def instructions(hub: bench_api.Hub, which: str, requests: int) -> int:
    env = bench_api._env(
        CAMPUSHUB_DATABASE_URL=hub.url,
        CAMPUSHUB_DATA_DIR=str(hub.directory),
        CAMPUSHUB_ENV="production",
        CAMPUSHUB_JWT_SECRET=os.environ["CAMPUSHUB_JWT_SECRET"],
    )
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    command += ["--drive", which, "--requests", str(requests)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    collected = re.search(r"Collected : (\d+)", finished.stderr)
    if finished.returncode != 0 or collected is None:
        raise RuntimeError(f"{which} under callgrind failed:\n{finished.stderr[-2000:]}")
    return int(collected.group(1))


def per_request(hub: bench_api.Hub, which: str) -> float:
    return (instructions(hub, which, MANY) - instructions(hub, which, FEW)) / (MANY - FEW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--keep", type=Path, help="keep built layers here and reuse them (shared with bench_api.py)")
    parser.add_argument("--drive", choices=["api", "baseline"], help=argparse.SUPPRESS)  # the measured process
    parser.add_argument("--requests", type=int, default=MANY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")

    os.environ.setdefault("CAMPUSHUB_JWT_SECRET", "instructions-benchmark-" + "x" * 32)
    print(f"# prefill({bench_api.FORM_ID}) in-process, no HTTP; instructions per request = ({MANY} - {FEW}) / 500")
    for kind in args.database:
        with bench_api.built_hub(kind, args.students, args.keep) as hub:
            api, baseline = per_request(hub, "api"), per_request(hub, "baseline")
        print(
            f"{kind:10} graphql {api / 1e6:.2f} M, baseline {baseline / 1e6:.2f} M instructions a prefill; "
            f"ratio {api / baseline:.2f}"
        )


if __name__ == "__main__":
    main()
