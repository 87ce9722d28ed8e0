"""Connector throughput against the raw rate of fetching the same pages, and memory vs scale.

    python benchmarks/bench_connectors.py [--students 50000] [--only academic/grades ...]

For every stream: the connector pulls it once while the exact requests it sends are recorded;
then the raw path replays those requests with the same client and authentication and only
parses the bodies (JSON, or GBK CSV for the finance export), alternating with connector pulls
on that client. Both are timed in the same run against the same stand-ins, so the ratio holds
on a noisy machine. The stand-ins run in a separate process, as real source systems would.

Memory: the peak RSS of a client process that only pulls every stream, at the chosen scale and
at a tenth of it, each in a process of its own; streaming connectors keep it flat.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil

from campushub.connectors import SOURCES, HttpSource, open_source, source_class

SECRETS = {
    "CAMPUSHUB_ACADEMIC_API_KEY": "dev-academic-key",
    "CAMPUSHUB_HR_CLIENT_ID": "campushub",
    "CAMPUSHUB_HR_CLIENT_SECRET": "dev-hr-secret",
    "CAMPUSHUB_FINANCE_USER": "campushub",
    "CAMPUSHUB_FINANCE_PASSWORD": "dev-finance-secret",
    "CAMPUSHUB_CARD_APP_KEY": "campushub",
    "CAMPUSHUB_CARD_APP_SECRET": "dev-card-secret",
}


@contextmanager
def stand_ins(students: int) -> Iterator[dict[str, str]]:
    """The four stand-in systems in their own process, on free loopback ports."""
    env = {**os.environ, **SECRETS}
    command = [sys.executable, "-m", "campushub.cli", "simulate", "--free-ports", "--students", str(students)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("URLS "):
                urls = json.loads(line[5:])
                break
        else:
            raise RuntimeError("stand-ins did not start")
        os.environ.update(SECRETS)
        os.environ.update({f"CAMPUSHUB_{name.upper()}_URL": url for name, url in urls.items()})
        yield urls
    finally:
        process.terminate()
        process.wait(timeout=30)


class PeakRSS:
    """The peak resident set size of this process while the block runs, sampled.

    (getrusage's ru_maxrss will not do: Linux carries it across fork and exec, so a child
    started by a big parent reports the parent's peak.)
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def parse_raw(response: httpx.Response) -> None:
    """What any client must do with a page: decode it. Nothing else."""
    if response.headers.get("content-type", "").startswith("text/csv"):
        for _ in csv.reader(io.StringIO(response.content.decode("gbk"))):
            pass
    else:
        json.loads(response.content)


ROUNDS = 2  # at least: the stand-ins' own pace drifts, and each side gets its best round
ROUND_SECONDS = 2.0  # small streams get more rounds, until each side has run this long
MAX_ROUNDS = 7


def measure(source_name: str, stream: str) -> tuple[int, float, float]:
    """(records, connector seconds, raw seconds) for one stream.

    The connector pulls the stream once to record its requests (and to warm the stand-ins'
    caches and the client's connection and credentials, which would otherwise favour whichever
    pass runs second); then raw replays and connector pulls alternate on that same client, and
    the best of each is compared. Every stream gets two rounds; a small one gets more, until
    each side has run for a couple of seconds, so a few milliseconds of noise cannot decide it.
    """
    sent: list[httpx.URL] = []

    def pull(source: HttpSource) -> tuple[int, float]:
        started = time.perf_counter()
        records = sum(len(batch.records) for batch in source.read(stream))
        return records, time.perf_counter() - started

    def replay(source: HttpSource) -> float:
        started = time.perf_counter()
        for url in sent:
            request = source.client.build_request("GET", url)
            source.authenticate(request)
            response = source.client.send(request)
            response.raise_for_status()
            parse_raw(response)
        return time.perf_counter() - started

    with open_source(source_name) as source:
        source.client.event_hooks["request"].append(
            lambda request: sent.append(request.url) if request.method == "GET" else None
        )
        pull(source)
        source.client.event_hooks["request"].clear()
        raw_times: list[float] = []
        connector_times: list[float] = []
        while len(raw_times) < ROUNDS or (len(raw_times) < MAX_ROUNDS and sum(raw_times) < ROUND_SECONDS):
            raw_times.append(replay(source))
            records, seconds = pull(source)
            connector_times.append(seconds)
    return records, min(connector_times), min(raw_times)


def all_streams() -> list[tuple[str, str]]:
    return [(source_name, stream) for source_name in SOURCES for stream in source_class(source_name).streams]


def pull_everything() -> int:
    total = 0
    for source_name, stream in all_streams():
        with open_source(source_name) as source:
            total += sum(len(batch.records) for batch in source.read(stream))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--only", nargs="*", help="source/stream pairs to measure (default: all)")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rss_child:
        with stand_ins(args.students), PeakRSS() as rss:
            records = pull_everything()
        print(json.dumps({"records": records, "peak_rss_mib": rss.mib}))
        return

    print(f"# connectors vs raw fetch+parse of the same pages, {args.students:,} students")
    print(f"{'stream':28} {'records':>10} {'connector/s':>12} {'raw/s':>12} {'ratio':>7}")
    worst = 1.0
    pairs = [tuple(pair.split("/", 1)) for pair in args.only] if args.only else all_streams()
    with stand_ins(args.students):
        for source_name, stream in pairs:
            records, connector_seconds, raw_seconds = measure(source_name, stream)
            ratio = raw_seconds / connector_seconds
            worst = min(worst, ratio)
            print(
                f"{source_name + '/' + stream:28} {records:>10,} {records / connector_seconds:>12,.0f} "
                f"{records / raw_seconds:>12,.0f} {ratio:>7.0%}",
                flush=True,
            )
    print(f"worst ratio: {worst:.0%} (goal >= 70%)")
    if args.only:
        return
    # Each scale in a process of its own that only runs the connectors: the comparisons above
    # hold whole answers in memory (the raw path decodes the export in one piece), and the
    # peak of one process would leak into the other's.
    small_scale = max(500, args.students // 10)
    small, big = peak_rss_mib(small_scale), peak_rss_mib(args.students)
    print(
        f"peak RSS of the client: {big:.0f} MiB at {args.students:,} students, {small:.0f} MiB at "
        f"{small_scale:,} students: {big / small:.2f}x (goal <= 1.5x)"
    )


def peak_rss_mib(students: int) -> float:
    """Peak RSS of a fresh process pulling every stream once at this scale."""
    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--students", str(students)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_mib"])


if __name__ == "__main__":
    main()
