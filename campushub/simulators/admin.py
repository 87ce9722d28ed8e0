"""The control plane every stand-in system exposes under /_admin: changes and fault knobs.

Unauthenticated and never faulted: it is for tests, benchmarks and demos on this machine.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from campushub.simulators.faults import FaultSettings
from campushub.simulators.world import World


class ChangeRequest(BaseModel):
    count: int = 1
    seed: int | None = None
    kinds: list[str] | None = None


def admin_router(world: World, faults: FaultSettings) -> APIRouter:
    router = APIRouter(prefix="/_admin", tags=["admin"])

    @router.get("/health")
    def health() -> dict[str, object]:
        return {"ok": True, "students": world.student_count, "changes": len(world.changes.log)}

    @router.post("/changes")
    def apply_changes(body: ChangeRequest) -> dict[str, object]:
        if not 0 <= body.count <= 100_000:
            raise HTTPException(422, "count must be between 0 and 100000")
        try:
            applied = world.changes.apply(body.count, seed=body.seed, kinds=body.kinds)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"changes": [change.as_json() for change in applied]}

    @router.get("/changes")
    def list_changes(since: dt.datetime | None = None) -> dict[str, object]:
        return {"changes": [c.as_json() for c in world.changes.log if since is None or c.at > since]}

    @router.get("/faults")
    def get_faults() -> dict[str, object]:
        return faults.as_json()

    @router.put("/faults")
    async def set_faults(request: Request) -> dict[str, object]:
        try:
            faults.update(await request.json())
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, str(exc)) from exc
        return faults.as_json()

    return router
