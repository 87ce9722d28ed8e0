"""Connector for 人事, the HR system: OAuth2 client credentials, opaque cursors, epoch-ms filter."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import httpx

from campushub.connectors.base import (
    AuthError,
    Batch,
    HttpSettings,
    HttpSource,
    PageRequest,
    PageWindow,
    SourceError,
    StreamSpec,
)
from campushub.reference.codes import code_table
from campushub.reference.source_codes import EMPLOYMENT_STATUS, SEX_TEXT

TOKEN_PATH = "/oauth/token"
DATE = "%Y/%m/%d"

STREAMS = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "staff",
            key=("staffNo",),
            required=(
                "staffNo",
                "name",
                "gender",
                "idNumber",
                "deptCode",
                "positionCode",
                "hireDate",
                "employmentStatus",
                "modifiedAt",
            ),
            dates={"birthDate": DATE, "hireDate": DATE},
            id_numbers={"idNumber": "idType"},
            codes={
                "gender": frozenset(SEX_TEXT),
                # HR sends the standard's names, not its codes.
                "ethnicity": frozenset(entry.name for entry in code_table("ethnicity").values()),
                "politicalStatus": frozenset(entry.name for entry in code_table("political_status").values()),
                "titleCode": "professional_title",
                "employmentStatus": EMPLOYMENT_STATUS,
            },
            integers=("salaryGrade", "monthlyGrossFen", "modifiedAt"),
        ),
        StreamSpec("departments", key=("code",), required=("code", "name", "kind")),
        StreamSpec("positions", key=("code",), required=("code", "name")),
        StreamSpec("titles", key=("code",), required=("code", "name")),
    )
}
# Streams the source can filter by `modified_after`; the others are small and read whole.
INCREMENTAL = frozenset({"staff"})


class HRSource(HttpSource):
    name = "hr"
    streams = STREAMS
    credential_variables = ("CAMPUSHUB_HR_CLIENT_ID", "CAMPUSHUB_HR_CLIENT_SECRET")

    def __init__(
        self,
        settings: HttpSettings,
        client_id: str,
        client_secret: str,
        *,
        page_size: int = 500,
        refresh_margin: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`refresh_margin`: the share of a token's lifetime left when we fetch a new one, so a
        request never leaves with a token about to expire on its way."""
        super().__init__(settings, transport=transport)
        # RFC 6749 §2.3.1: form-encode both parts before they go into the Basic header.
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
        self._client_auth = "Basic " + base64.b64encode(pair.encode()).decode()
        self.page_size = page_size
        self.refresh_margin = refresh_margin
        self._token: str | None = None
        self._refresh_at = 0.0
        # Pages are fetched on a prefetch thread; two reads at once must not race for a token.
        self._token_lock = threading.Lock()
        self._token_url = self.client.build_request("POST", TOKEN_PATH).url

    # -- the token -----------------------------------------------------------
    def _is_token_request(self, request: httpx.Request) -> bool:
        return request.url.copy_with(query=None) == self._token_url

    def _parse_token(self, response: httpx.Response) -> tuple[str, float | None]:
        body = json.loads(response.content)
        token, kind, expires_in = body["access_token"], body.get("token_type", ""), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise ValueError("token answer without access_token")
        if str(kind).lower() != "bearer":
            raise SourceError(self.name, f"token endpoint issued a {kind!r} token, not a bearer token")
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int | float)):
            raise ValueError("expires_in is not a number")
        return token, expires_in

    def _fetch_token(self) -> str:
        asked_at = time.monotonic()  # before asking: the server starts its clock later, so we err early
        token, expires_in = self.fetch(
            "POST", TOKEN_PATH, self._parse_token, page="token", data={"grant_type": "client_credentials"}
        )
        self._token = token
        # Without expires_in the token lasts until the server refuses it (see on_unauthorized).
        self._refresh_at = float("inf") if expires_in is None else asked_at + expires_in * (1 - self.refresh_margin)
        return token

    def _current_token(self) -> str:
        with self._token_lock:
            if self._token is not None and time.monotonic() < self._refresh_at:
                return self._token
            return self._fetch_token()

    def authenticate(self, request: httpx.Request) -> None:
        if self._is_token_request(request):
            request.headers["Authorization"] = self._client_auth
        else:
            request.headers["Authorization"] = f"Bearer {self._current_token()}"

    def on_unauthorized(self, response: httpx.Response) -> bool:
        if self._is_token_request(response.request):
            raise AuthError(
                self.name,
                f"the token endpoint refused the client credentials ({_oauth_error(response)}); "
                "check CAMPUSHUB_HR_CLIENT_ID and CAMPUSHUB_HR_CLIENT_SECRET",
                url=str(self._token_url),
            )
        # Expired early, revoked, or forgotten by a restarted server: one new token, one retry.
        self._token = None
        return True

    def check(self, response: httpx.Response, url: str, page: str | None) -> None:
        if self._is_token_request(response.request) and response.status_code == 400:
            raise AuthError(self.name, f"the token endpoint refused the request ({_oauth_error(response)})", url=url)

    # -- streams -------------------------------------------------------------
    def _page(self, response: httpx.Response) -> dict[str, Any]:
        body = json.loads(response.content)
        if not isinstance(body["items"], list) or not isinstance(body["server_time_ms"], int):
            raise ValueError("page without items and server_time_ms")
        if body.get("next_cursor") is not None and not isinstance(body["next_cursor"], str):
            raise ValueError("next_cursor is not a string")
        return body

    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        """Pages of `stream`; with a cursor (epoch milliseconds), only records modified after it.

        The next cursor is the server's time at the first page, handed over with the last page,
        and every later page is bounded by it: anything that changes while we page is picked up
        by the next sync, and does not shift the pages of this one.
        """
        spec = self.spec(stream)
        incremental = stream in INCREMENTAL
        if cursor is not None and incremental and not cursor.isdigit():
            raise SourceError(self.name, f"cursor {cursor!r} of stream {stream} is not epoch milliseconds")
        window = PageWindow(spec)
        path = f"/api/{stream}"
        params: dict[str, Any] = {"limit": self.page_size}
        if cursor and incremental:
            params["modified_after"] = cursor
        numbers = itertools.count(2)

        def following(request: PageRequest, data: dict[str, Any]) -> PageRequest | None:
            next_page = data.get("next_cursor")
            if next_page is None:
                return None
            if next_page == request.params.get("cursor"):
                url = str(self.client.build_request("GET", path).url)
                raise SourceError(self.name, "the page cursor did not advance", url=url, page=request.label)
            pinned = {**request.params, "cursor": next_page}
            if incremental:
                pinned.setdefault("modified_before", data["server_time_ms"])
            return PageRequest(path, pinned, f"page {next(numbers)}")

        server_time: int | None = None
        for request, data, last in self.paginate(PageRequest(path, params, "page 1"), self._page, following):
            server_time = data["server_time_ms"] if server_time is None else server_time
            next_cursor = str(server_time) if last and incremental else None
            yield self.batch(stream, request.label, window.page(data["items"]), next_cursor)


def _oauth_error(response: httpx.Response) -> str:
    """The OAuth2 error code of an answer, for messages: never the request's credentials."""
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        error = None
    return f"HTTP {response.status_code} {error}" if isinstance(error, str) else f"HTTP {response.status_code}"
