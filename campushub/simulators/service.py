"""Plumbing shared by the four stand-in systems: the app shell and page selection."""

from __future__ import annotations

import datetime as dt
import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any, overload

from fastapi import FastAPI
from fastapi.responses import Response

from campushub.simulators.admin import admin_router
from campushub.simulators.faults import FaultMiddleware, FaultSettings
from campushub.simulators.world import SNAPSHOT, World


def service_app(title: str, description: str, world: World, faults: FaultSettings, fault_seed: int) -> FastAPI:
    app = FastAPI(title=title, description=description, version="1.0.0", redoc_url=None)
    app.include_router(admin_router(world, faults))
    app.add_middleware(FaultMiddleware, settings=faults, seed=fault_seed)
    app.state.world = world
    app.state.faults = faults
    return app


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code, headers, media_type="application/json")


class Selection:
    """The record indices a filtered query selects, in order, stable while a client pages.

    No filter is a `range` (never materialised). A filter newer than the seeded snapshot looks
    only at changed records, bounded by `until` (the first page's server time), so a record
    changed again mid-sync does not shift the pages. An older filter scans once and caches
    the answer for the pages that follow.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self._cache: dict[tuple[str, dt.datetime, int], list[int]] = {}

    def select(
        self,
        stream: str,
        count: int,
        since: dt.datetime | None,
        until: dt.datetime | None,
        updated_at: Callable[[int], dt.datetime],
    ) -> Sequence[int]:
        if since is None:
            return range(count)
        if since >= SNAPSHOT:
            return self.world.changes.changed_between(stream, since, until)
        key = (stream, since, count)
        if key not in self._cache:
            self._cache.clear()  # one scan at a time is enough for paging through it
            self._cache[key] = [i for i in range(count) if updated_at(i) > since]
        return self._cache[key]


def page_slice(selection: Sequence[int], page: int, size: int, repeat_previous: bool) -> list[int]:
    """Indices on a 1-based page; optionally starting with the previous page's last one."""
    start = (page - 1) * size
    indices = list(selection[start : start + size])
    if repeat_previous and indices and start > 0:
        indices.insert(0, selection[start - 1])
    return indices


class Without(Sequence[int]):
    """An ascending selection of record indices minus a few removed ones, without listing it.

    The selection may be a `range` of a million students; deletions are a handful. So only the
    positions of the removed indices are kept, and position -> index is a bisection: pages stay
    generated on demand and their count is exact.
    """

    def __init__(self, selection: Sequence[int], removed: Sequence[int]) -> None:
        self.selection = selection
        positions = []
        for index in removed:  # ascending, so the positions are too
            position = bisect_left(selection, index)
            if position < len(selection) and selection[position] == index:
                positions.append(position)
        # positions[j] - j is the position in the result from which the j-th removal is skipped.
        self._skips = [position - j for j, position in enumerate(positions)]

    def __len__(self) -> int:
        return len(self.selection) - len(self._skips)

    def _index(self, position: int) -> int:
        return self.selection[position + bisect_right(self._skips, position)]

    @overload
    def __getitem__(self, item: int) -> int: ...
    @overload
    def __getitem__(self, item: slice) -> list[int]: ...
    def __getitem__(self, item: int | slice) -> int | list[int]:
        size = len(self)
        if isinstance(item, slice):
            return [self._index(p) for p in range(*item.indices(size))]
        position = item + size if item < 0 else item
        if not 0 <= position < size:
            raise IndexError(item)
        return self._index(position)
