"""The whole hub on one machine, on embedded defaults: what `make run` starts.

1. the four stand-in source systems (in this process);
2. the GraphQL API with the service hall and steward desk (`campushub serve`, development mode);
3. the first sync: the main job, recorded in the Dagster instance under `data/dagster` — on a
   second start it finds the data already synced and pulls only what changed;
4. the Dagster webserver and daemon (`dagster dev`), whose schedules keep the hub in sync.

Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from campushub.models.engine import DATA_DIR, database_url

API_PORT = 8000
DAGSTER_PORT = 3000


class Stack:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, command: list[str]) -> None:
        # A session of its own: stopping it stops whatever it started in turn.
        process = subprocess.Popen(command, start_new_session=True)
        self.processes.append(process)
        self.say(f"started {name} (pid {process.pid})")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def wait(self) -> int:
        """Until Ctrl-C, or until one of the processes dies (which stops the rest)."""
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    self.say(f"process {process.pid} exited with {process.returncode}: stopping the hub")
                    return 1
            time.sleep(1)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_stack(start_stand_ins: Callable[[], dict[str, str]], say: Callable[[str], None]) -> int:
    from campushub.graphql.demo import demo_users
    from campushub.models.engine import make_engine
    from campushub.models.migrate import upgrade
    from campushub.orchestration.mainjob import run_main_job

    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str((DATA_DIR / "dagster").resolve())))
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_config = dagster_home / "dagster.yaml"
    if not instance_config.exists():
        # Embedded defaults (SQLite storage in this folder); university data stays home.
        instance_config.write_text("telemetry:\n  enabled: false\n")
    os.environ.setdefault("CAMPUSHUB_DATABASE_URL", database_url())  # the children use the same database
    os.environ.setdefault("CAMPUSHUB_ENV", "development")
    os.environ.setdefault("CAMPUSHUB_DAGSTER_URL", f"http://127.0.0.1:{DAGSTER_PORT}")
    stack = Stack(say)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        urls = start_stand_ins()  # sets the connectors' environment for every child too
        say("stand-in systems: " + ", ".join(f"{name} {url}" for name, url in urls.items()))
        engine = make_engine()
        upgrade(engine)
        stack.spawn("the API", [sys.executable, "-m", "campushub.cli", "serve", "--port", str(API_PORT)])
        say("first sync (the main job) …")
        if not run_main_job(say):
            say("the first sync did not complete: see above; the hub keeps running with what it has")
        dagster = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-p", str(DAGSTER_PORT)]
        stack.spawn("the Dagster webserver and daemon", dagster)
        with engine.connect() as connection:
            users = demo_users(connection)
        base = f"http://127.0.0.1:{API_PORT}"
        say("")
        say("campushub is up:")
        say(f"  service hall   {base}/hall")
        say(f"  steward desk   {base}/desk")
        say(f"  verification   {base}/verify")
        say(f"  GraphiQL       {base}/graphql")
        say(f"  Dagster UI     http://127.0.0.1:{DAGSTER_PORT}")
        say("demo users (pick one on the hall's sign-in page, or `campushub token ROLE`):")
        for role, principal in users.items():
            say(f"  {role:16} {principal.subject:14} {principal.name or ''}")
        say("Ctrl-C stops everything.")
        # Dagster's in-process run installs signal handlers of its own, for Ctrl-C too, and may
        # leave them behind: install ours after it.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return stack.wait()
    except KeyboardInterrupt:
        say("stopping …")
        return 0
    finally:
        stack.stop()
