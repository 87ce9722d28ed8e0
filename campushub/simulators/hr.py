"""人事 — the HR system as a modern vendor API exposes it: OAuth2 client credentials with
short-lived bearer tokens, camelCase English JSON, opaque-cursor (keyset) pagination and a
`modified_after` filter in epoch milliseconds."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import secrets
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote_plus

from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.responses import Response
from fastapi.security import OAuth2

from campushub.reference.codes import code_table
from campushub.simulators import catalog
from campushub.simulators.faults import FaultSettings
from campushub.simulators.malformed import Corruptible, maybe_corrupt, repeats_previous_page
from campushub.simulators.service import Selection, json_response, service_app
from campushub.simulators.settings import SimulatorSettings
from campushub.simulators.world import CST, Staff, World

TOKEN_PATH = "/oauth/token"
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
# However many clients ask, the token table stays this small; the oldest token goes first.
MAX_TOKENS = 10_000
DATE = "%Y/%m/%d"
GENDER = {"1": "男", "2": "女"}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_MS = 32_503_680_000_000  # 3000-01-01: later instants are typos, and overflow datetime near 9999

CORRUPTIBLE = {
    "staff": Corruptible(
        key="staffNo", id_number="idNumber", id_type="idType", date=("birthDate", "1985/02/30"), code=("gender", "未知")
    ),
}


def epoch_ms(at: dt.datetime) -> int:
    return (at - EPOCH) // dt.timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> dt.datetime:
    return (EPOCH + dt.timedelta(milliseconds=ms)).astimezone(CST)


def staff_json(staff: Staff) -> dict[str, Any]:
    person = staff.person
    return {
        "staffNo": staff.staff_no,
        "name": staff.name_in_hr,
        "gender": GENDER[person.sex],
        "idType": person.id_type,
        "idNumber": person.id_number,
        "birthDate": person.birth.strftime(DATE),
        "ethnicity": code_table("ethnicity")[person.ethnicity].name,
        "politicalStatus": code_table("political_status")[person.political_status].name,
        "deptCode": staff.department,
        "positionCode": staff.position,
        "titleCode": staff.title,
        "hireDate": staff.hire_date.strftime(DATE),
        "employmentStatus": staff.employment_status,
        "salaryGrade": staff.salary_grade,
        "monthlyGrossFen": str(staff.monthly_gross_fen),
        "mobile": staff.phone,
        "email": f"{staff.staff_no}@{catalog.EMAIL_DOMAIN}",
        "modifiedAt": epoch_ms(staff.updated_at),
    }


class TokenStore:
    """Bearer tokens issued and not yet expired, in memory, as a single-node vendor keeps them.

    Every token lives equally long, so insertion order is expiry order: pruning looks only at
    the front of the table, and a restart (`revoke_all`) forgets every token at once.
    """

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            while self._expiry:
                oldest, expires = next(iter(self._expiry.items()))
                if expires > now and len(self._expiry) < MAX_TOKENS:
                    break
                del self._expiry[oldest]
            self._expiry[token] = now + self.lifetime
        return token

    def problem(self, token: str) -> str | None:
        """Why `token` is refused, or None if it is good."""
        with self._lock:
            expires = self._expiry.get(token)
            if expires is None:
                return "the access token is unknown"
            if expires <= self.clock():
                del self._expiry[token]
                return "the access token has expired"
        return None

    def revoke_all(self) -> None:
        with self._lock:
            self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.headers = status, error, description, headers


def _invalid_token(description: str) -> _OAuthError:
    return _OAuthError(401, "invalid_token", description, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(client id, secret) from an HTTP Basic header, form-decoded as RFC 6749 §2.3.1 asks."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, colon, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (unquote_plus(client_id), unquote_plus(secret)) if colon else None


def encode_cursor(stream: str, page: int, last: int) -> str:
    # The page number rides along so page-boundary faults stay a function of the page.
    return base64.urlsafe_b64encode(f"{stream}:{page}:{last}".encode()).decode().rstrip("=")


def decode_cursor(stream: str, cursor: str) -> tuple[int, int]:
    """(page number, last index) of the page that handed out `cursor`."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        name, page, last = text.split(":")
        if name == stream and int(page) >= 1 and int(last) >= 0:
            return int(page), int(last)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise _OAuthError(400, "invalid_cursor", f"not a cursor of /api/{stream}: pass next_cursor back unchanged")


BEARER = OAuth2(
    flows=OAuthFlows(clientCredentials=OAuthFlowClientCredentials(tokenUrl=TOKEN_PATH)),
    scheme_name="clientCredentials",
    description="OAuth2 client credentials; tokens are short-lived, fetch a new one before `expires_in` runs out.",
    auto_error=False,
)
Authorization = Annotated[str | None, Depends(BEARER)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"records per page, at most {MAX_LIMIT}")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page; absent for the first")]
ModifiedAfter = Annotated[
    int | None, Query(ge=0, le=LATEST_MS, description="only records modified after this instant (epoch milliseconds)")
]
ModifiedBefore = Annotated[
    int | None,
    Query(
        ge=0, le=LATEST_MS, description="only records modified up to this instant: pass the first page's server_time_ms"
    ),
]

_TOKEN_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_id": {"type": "string", "description": "unless sent with HTTP Basic"},
                        "client_secret": {"type": "string", "description": "unless sent with HTTP Basic"},
                    },
                }
            }
        },
    }
}


def create_app(world: World, settings: SimulatorSettings, faults: FaultSettings, fault_seed: int = 0) -> FastAPI:
    app = service_app(
        "人事系统 HR (stand-in)",
        "Staff, departments, positions and professional titles. Get a bearer token from "
        f"`POST {TOKEN_PATH}` (OAuth2 client credentials) and page with `next_cursor`.",
        world,
        faults,
        fault_seed,
    )
    tokens = TokenStore(settings.hr_token_lifetime)
    app.state.tokens = tokens
    selection = Selection(world)
    lifetime = settings.hr_token_lifetime
    expires_in = int(lifetime) if float(lifetime).is_integer() else lifetime

    @app.exception_handler(_OAuthError)
    def oauth_error(request: object, exc: _OAuthError) -> Response:
        return json_response({"error": exc.error, "error_description": exc.description}, exc.status, exc.headers)

    @app.post(TOKEN_PATH, summary="令牌 access token (client credentials)", openapi_extra=_TOKEN_REQUEST_BODY)
    async def token(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        grant = form.get("grant_type", [None])[0]
        if grant is None:
            raise _OAuthError(400, "invalid_request", "grant_type is required")
        if grant != "client_credentials":
            raise _OAuthError(400, "unsupported_grant_type", "only client_credentials is supported")
        basic = _basic_credentials(request.headers.get("Authorization"))
        client_id, secret = basic or (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
        # Both comparisons always run, so the answer's timing does not tell which one failed.
        id_ok = hmac.compare_digest(client_id.encode(), settings.hr_client_id.encode())
        secret_ok = hmac.compare_digest(secret.encode(), settings.hr_client_secret.encode())
        if not (id_ok and secret_ok):
            challenge = {"WWW-Authenticate": 'Basic realm="hr"'} if basic else None
            raise _OAuthError(401, "invalid_client", "client authentication failed", challenge)
        body = {"access_token": tokens.issue(), "token_type": "Bearer", "expires_in": expires_in}
        return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def require_token(authorization: Authorization = None) -> None:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _invalid_token("a bearer token is required")
        problem = tokens.problem(value.strip())
        if problem:
            raise _invalid_token(problem)

    auth = [Depends(require_token)]

    def server_time_ms() -> int:
        # The last whole millisecond: a change stamped with the current one may still be landing.
        return epoch_ms(dt.datetime.now(CST)) - 1

    def paged(
        stream: str,
        chosen: Sequence[int],
        render: Callable[[list[int]], list[dict[str, Any]]],
        limit: int,
        cursor: str | None,
        now_ms: int,
        repeats: bool = False,
    ) -> Response:
        page, last, start = 1, -1, 0
        if cursor is not None:
            previous, last = decode_cursor(stream, cursor)
            page = previous + 1
            start = bisect_right(chosen, last)
        indices = list(chosen[start : start + limit])
        next_cursor = encode_cursor(stream, page, indices[-1]) if start + limit < len(chosen) else None
        # A page-shift repeat re-sends the record the cursor points at, if it is still selected.
        still_selected = start > 0 and chosen[start - 1] == last
        if repeats and still_selected and repeats_previous_page(world.seed, stream, page, faults.malformed_rate):
            indices.insert(0, last)
        return json_response({"items": render(indices), "next_cursor": next_cursor, "server_time_ms": now_ms})

    @app.get("/api/staff", dependencies=auth, summary="教职工 staff")
    def staff(
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
        modified_after: ModifiedAfter = None,
        modified_before: ModifiedBefore = None,
    ) -> Response:
        now_ms = server_time_ms()
        since = None if modified_after is None else from_epoch_ms(modified_after)
        until = from_epoch_ms(now_ms if modified_before is None else modified_before)
        chosen = selection.select("staff", world.staff_count, since, until, lambda i: world.staff(i).updated_at)
        plan = CORRUPTIBLE["staff"]

        def render(indices: list[int]) -> list[dict[str, Any]]:
            return [
                maybe_corrupt(staff_json(world.staff(i)), world.seed, "staff", i, faults.malformed_rate, plan)
                for i in indices
            ]

        return paged("staff", chosen, render, limit, cursor, now_ms, repeats=True)

    def reference(stream: str, rows: list[dict[str, Any]], limit: int, cursor: str | None) -> Response:
        return paged(stream, range(len(rows)), lambda ix: [rows[i] for i in ix], limit, cursor, server_time_ms())

    @app.get("/api/departments", dependencies=auth, summary="部门 departments")
    def departments(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response:
        rows = [
            {"code": code, "name": name, "kind": kind, "parentCode": "GDOU"}
            for code, name, kind in world.hr_departments()
        ]
        return reference("departments", rows, limit, cursor)

    @app.get("/api/positions", dependencies=auth, summary="岗位 positions")
    def positions(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response:
        rows = [{"code": code, "name": name} for code, name in catalog.POSITIONS]
        return reference("positions", rows, limit, cursor)

    @app.get("/api/titles", dependencies=auth, summary="专业技术职务 professional titles (GB/T 8561)")
    def titles(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response:
        rows = [
            {"code": code, "name": entry.name, "nameEn": entry.name_en}
            for code, entry in code_table("professional_title").items()
        ]
        return reference("titles", rows, limit, cursor)

    return app
