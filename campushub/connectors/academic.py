"""Connector for 教务, the academic affairs system: API key, page numbers, updated-since."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from campushub.connectors.base import (
    Batch,
    HttpSettings,
    HttpSource,
    PageRequest,
    PageWindow,
    SourceError,
    SteadyTotal,
    StreamSpec,
)

ISO_MS = "%Y-%m-%dT%H:%M:%S.%f%z"

STREAMS = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "students",
            key=("XH",),
            required=("XH", "XM", "XBM", "SFZJH", "YXDM", "ZYDM", "BJDM", "RXNY", "XJZTM", "GXSJ"),
            dates={"CSRQ": "%Y-%m-%d", "RXNY": "%Y%m", "GXSJ": ISO_MS},
            id_numbers={"SFZJH": "SFZJLXM"},
            codes={
                "XBM": "sex",
                "MZM": "ethnicity",
                "ZZMMM": "political_status",
                "XJZTM": "student_status",
                "PYCCM": "education_level",
            },
        ),
        StreamSpec(
            "grades",
            key=("XH", "KCDM", "XNXQ"),
            required=("XH", "KCDM", "XNXQ", "CJ", "GXSJ"),
            dates={"GXSJ": ISO_MS},
            codes={"KCXZ": frozenset({"必修", "选修"})},
        ),
        StreamSpec("colleges", key=("YXDM",), required=("YXDM", "YXMC")),
        StreamSpec("majors", key=("ZYDM",), required=("ZYDM", "ZYMC", "YXDM")),
        StreamSpec("classes", key=("BJDM",), required=("BJDM", "BJMC", "ZYDM")),
        StreamSpec("courses", key=("KCDM",), required=("KCDM", "KCMC")),
    )
}
# Streams the source can filter by `updated_since`; the others are small and read whole.
INCREMENTAL = frozenset({"students", "grades"})


class AcademicSource(HttpSource):
    name = "academic"
    streams = STREAMS
    credential_variables = ("CAMPUSHUB_ACADEMIC_API_KEY",)

    def __init__(
        self,
        settings: HttpSettings,
        api_key: str,
        *,
        page_size: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(settings, transport=transport)
        self._api_key = api_key
        self.page_size = page_size

    def authenticate(self, request: httpx.Request) -> None:
        request.headers["X-API-Key"] = self._api_key

    def _data(self, response: httpx.Response) -> dict[str, Any]:
        body = json.loads(response.content)
        if body.get("code") != 0:
            raise SourceError(self.name, f"error {body.get('code')}: {body.get('msg')}", url=str(response.url))
        data = body["data"]
        if not isinstance(data["list"], list) or not isinstance(data["total"], int):
            raise ValueError("page without list and total")
        return data

    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        """Pages of `stream`; with a cursor, only records updated after it.

        The next cursor is the server's time at the first page, handed over with the last page:
        anything that changes while we page is picked up by the next sync.

        Later pages are pinned to that time, but a deletion is not: when the total moves, the
        pull starts again (`pulled_again_when_shifted`).
        """
        return self.pulled_again_when_shifted(stream, lambda: self._pull(stream, cursor))

    def _pull(self, stream: str, cursor: str | None) -> Iterator[Batch]:
        spec = self.spec(stream)
        window = PageWindow(spec)
        params: dict[str, Any] = {"pageSize": self.page_size, "pageNo": 1}
        if cursor and stream in INCREMENTAL:
            params["updated_since"] = cursor
        total = SteadyTotal()

        def following(request: PageRequest, data: dict[str, Any]) -> PageRequest | None:
            page = request.params["pageNo"]
            total.check(data["total"], page)
            if page * self.page_size >= data["total"] or not data["list"]:
                return None
            # Later pages are pinned to the first page's server time, so they page a stable set.
            pinned = {"updated_until": data["serverTime"], **request.params, "pageNo": page + 1}
            return PageRequest(request.path, pinned, f"page {page + 1}")

        first = PageRequest(f"/api/v1/{stream}", params, "page 1")
        until = None
        for request, data, last in self.paginate(first, self._data, following):
            until = until or data["serverTime"]
            next_cursor = until if last and stream in INCREMENTAL else None
            yield self.batch(stream, request.label, window.page(data["list"]), next_cursor)
