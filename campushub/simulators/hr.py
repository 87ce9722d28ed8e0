"""Placeholder until this stand-in system is written."""

from fastapi import FastAPI

from campushub.simulators.service import service_app


def create_app(world, settings, faults, fault_seed=0) -> FastAPI:  # type: ignore[no-untyped-def]
    return service_app("stand-in", "", world, faults, fault_seed)
