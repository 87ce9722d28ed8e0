"""Run the four stand-in systems, all sharing one world, on local ports.

`SimulatorCluster` serves them from one event loop, either in the foreground (the CLI's
`campushub simulate`) or in a background thread (tests and benchmarks, on free ports).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from campushub.simulators.faults import FaultSettings
from campushub.simulators.settings import DEFAULT_PORTS, SimulatorSettings
from campushub.simulators.world import Scale, World

SOURCES = ("academic", "hr", "finance", "card")


@dataclass
class RunningService:
    name: str
    app: FastAPI
    faults: FaultSettings
    socket: socket.socket

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"


def build_apps(world: World, settings: SimulatorSettings) -> dict[str, tuple[FastAPI, FaultSettings]]:
    from campushub.simulators import academic, card, finance, hr

    modules = {"academic": academic, "hr": hr, "finance": finance, "card": card}
    apps = {}
    for n, name in enumerate(SOURCES):
        faults = FaultSettings()
        apps[name] = (modules[name].create_app(world, settings, faults, fault_seed=settings.seed * 10 + n), faults)
    return apps


class SimulatorCluster:
    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings or SimulatorSettings.from_env()
        self.world = World(self.settings.seed, Scale(self.settings.students))
        ports = DEFAULT_PORTS if ports is None else ports
        self.services: dict[str, RunningService] = {}
        for name, (app, faults) in build_apps(self.world, self.settings).items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Without it, small answers wait on Nagle's algorithm: ~40 ms per request on loopback.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, ports.get(name, 0)))
            self.services[name] = RunningService(name, app, faults, sock)
        self._servers = [
            uvicorn.Server(uvicorn.Config(s.app, log_level="warning", lifespan="off", access_log=False))
            for s in self.services.values()
        ]
        self._thread: threading.Thread | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {name: service.url for name, service in self.services.items()}

    def faults(self, name: str) -> FaultSettings:
        return self.services[name].faults

    def reset_faults(self) -> None:
        for service in self.services.values():
            service.faults.update(FaultSettings().as_json())

    async def serve(self) -> None:
        await asyncio.gather(
            *(server.serve(sockets=[s.socket]) for server, s in zip(self._servers, self.services.values(), strict=True))
        )

    def start(self) -> SimulatorCluster:
        """Serve from a background thread; returns once every service accepts connections."""
        self._thread = threading.Thread(target=asyncio.run, args=(self.serve(),), name="simulators", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(server.started for server in self._servers):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("simulators did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)
        for service in self.services.values():
            service.socket.close()

    def __enter__(self) -> SimulatorCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
