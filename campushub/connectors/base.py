"""What every source connector shares: the HTTP client, retries, deadlines, record checks.

A connector turns one source system's API into a stream of `Batch`es. A batch is one page of
`Record`s plus the cursor that becomes safe to store once that page, and every page before it,
has been committed by the caller. Records that fail their stream's checks are not dropped: they
come out with `problems` set and the raw payload intact, so the pipeline can quarantine them.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Container, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, TypeVar

import httpx

from campushub.reference.codes import code_table
from campushub.reference.identity import id_number_problem

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="HttpSource")


# ---------------------------------------------------------------------------- errors
class SourceError(Exception):
    """A sync could not complete. The message names the source, URL and page; never a secret."""

    def __init__(self, source: str, reason: str, *, url: str | None = None, page: str | None = None) -> None:
        self.source, self.reason, self.url, self.page = source, reason, url, page
        where = "".join([f" at {url}" if url else "", f" ({page})" if page else ""])
        super().__init__(f"{source}: {reason}{where}")


class AuthError(SourceError):
    """Credentials were refused. Retrying will not help, so it is raised at once."""


class MalformedPageError(SourceError):
    """A page could not be parsed (truncated JSON, broken CSV); retried, then raised."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Record:
    """One record as the source sent it, with the reasons it cannot be trusted (if any)."""

    stream: str
    key: str | None
    data: dict[str, Any]
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Batch:
    """One page of a stream.

    `cursor` is the incremental cursor to store after this batch and all before it are
    committed; None means "not yet": a stream whose cursor is only known at its end (an
    updated-since pull, a whole-file export) hands it over with its last batch.
    """

    source: str
    stream: str
    page: str
    records: list[Record]
    cursor: str | None
    fetched_at: dt.datetime


_FIXED_WIDTH = {"%Y": 4, "%m": 2, "%d": 2, "%H": 2, "%M": 2, "%S": 2}


@lru_cache(maxsize=64)
def _fixed_width_checker(fmt: str) -> Callable[[str], bool] | None:
    """A fast validity check for formats made only of fixed-width numeric directives and
    literals ('%Y%m%d%H%M%S', '%Y/%m/%d'); None for any other format.

    Timestamps are mostly unique, so caching strptime does not help them; slicing does.
    """
    slices: dict[str, slice] = {}
    literals: list[tuple[int, str]] = []
    position = index = 0
    while index < len(fmt):
        directive = fmt[index : index + 2]
        if directive in _FIXED_WIDTH:
            slices[directive] = slice(position, position + _FIXED_WIDTH[directive])
            position, index = position + _FIXED_WIDTH[directive], index + 2
        elif fmt[index] == "%":
            return None
        else:
            literals.append((position, fmt[index]))
            position, index = position + 1, index + 1
    length = position
    names = ("%Y", "%m", "%d", "%H", "%M", "%S")
    present = [name in slices for name in names]
    if present != sorted(present, reverse=True):  # e.g. '%Y%d': fall back to strptime
        return None
    parts = [slices[name] for name in names if name in slices]
    tail = (1, 1, 1, 0, 0, 0)[len(parts) :]
    digits_only = not literals

    def check(value: str) -> bool:
        if len(value) != length:
            return False
        if digits_only:
            if not value.isdigit():
                return False
        elif any(value[at] != literal for at, literal in literals) or not all(value[p].isdigit() for p in parts):
            return False
        try:
            dt.datetime(*map(int, map(value.__getitem__, parts)), *tail)
        except ValueError:
            return False
        return True

    return check


@lru_cache(maxsize=65536)
def _parses(value: str, fmt: str) -> bool:
    # Cached for the many repeated dates (an export's issue date); the slicing check keeps
    # the unique ones (transaction times) cheap too.
    check = _fixed_width_checker(fmt)
    return check(value) if check else _parses_strptime(value, fmt)


def _parses_strptime(value: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class StreamSpec:
    """A stream's record contract, declared as data and checked the same way for every source."""

    name: str
    key: tuple[str, ...]
    required: tuple[str, ...] = ()
    dates: Mapping[str, str] = field(default_factory=dict)  # field -> strptime format
    id_numbers: tuple[str, ...] = ()
    codes: Mapping[str, str | frozenset[str]] = field(default_factory=dict)  # field -> table or values
    integers: tuple[str, ...] = ()  # e.g. money in fen, sent as strings of digits

    def key_of(self, data: Mapping[str, Any]) -> str | None:
        if len(self.key) == 1:
            value = data.get(self.key[0])
            return None if value in (None, "") else str(value)
        parts = [data.get(name) for name in self.key]
        if any(part in (None, "") for part in parts):
            return None
        return "|".join(str(part) for part in parts)

    @cached_property
    def _code_domains(self) -> tuple[tuple[str, Container[str]], ...]:
        return tuple(
            (name, code_table(domain) if isinstance(domain, str) else domain) for name, domain in self.codes.items()
        )

    def problems(self, data: Mapping[str, Any]) -> list[str]:
        """Every rule the record breaks, each naming the field (never an ID number's value)."""
        # The hot path of every sync: plain loops over the declared fields, nothing per record
        # that could be done once per stream.
        problems = [f"missing {name}" for name in self.required if data.get(name) in (None, "")]
        for name, fmt in self.dates.items():
            value = data.get(name)
            if value not in (None, "") and not (isinstance(value, str) and _parses(value, fmt)):
                problems.append(f"{name}: {value!r} is not a valid date ({fmt})")
        for name in self.id_numbers:
            value = data.get(name)
            if value not in (None, ""):
                problem = id_number_problem(value) if isinstance(value, str) else "id number: not a string"
                if problem:
                    problems.append(f"{name}: {problem}")
        for name, allowed in self._code_domains:
            value = data.get(name)
            if value not in (None, "") and value not in allowed:
                problems.append(f"{name}: unknown code {value!r}")
        for name in self.integers:
            value = data.get(name)
            if value not in (None, "") and not (type(value) is int or (isinstance(value, str) and _is_integer(value))):
                problems.append(f"{name}: {value!r} is not a whole number")
        return problems


def _is_integer(value: str) -> bool:
    return value.isdigit() or (value[:1] == "-" and value[1:].isdigit())


DUPLICATE = "duplicate: the same record was already sent"


class PageWindow:
    """Checks the records of a stream page by page.

    Remembers the keys of the previous and the current page: enough to catch the
    page-boundary repeats that offset pagination produces when data shifts underneath it, in
    memory bounded by two pages whatever the stream's size. (Repeats further apart are
    harmless: the unified layer upserts by key.)
    """

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.previous: set[str] = set()
        self.current: set[str] = set()

    def page(self, rows: list[dict[str, Any]]) -> list[Record]:
        self.previous, self.current = self.current, set()
        return [self.record(row) for row in rows]

    def record(self, data: dict[str, Any]) -> Record:
        if not isinstance(data, dict):
            return Record(self.spec.name, None, {"value": data}, ("not an object",))
        problems = self.spec.problems(data)
        key = self.spec.key_of(data)
        if key is not None:
            if key in self.previous or key in self.current:
                problems.append(DUPLICATE)
            self.current.add(key)
        return Record(self.spec.name, key, data, tuple(problems))


@dataclass(frozen=True)
class PageRequest:
    """One page to fetch: where, with which query, and how to name it in errors."""

    path: str
    params: Mapping[str, Any]
    label: str


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and in total time."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    total_time: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after or 0.0)


@dataclass(frozen=True)
class HttpSettings:
    base_url: str
    timeout: float = 30.0  # connect/read/write/pool, each
    deadline: float = 120.0  # one request, start to last byte
    max_connections: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (RFC 9110 allows delay-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ---------------------------------------------------------------------------- the client
class HttpSource:
    """One source system over one long-lived httpx client.

    Subclasses set `name` and `streams`, implement `read(stream, cursor)`, and may override
    `authenticate(request)` and `check(response)` for their own auth and error conventions.
    """

    name = "source"
    streams: Mapping[str, StreamSpec] = {}
    # Environment variables holding the credentials, in the order __init__ takes them.
    credential_variables: tuple[str, ...] = ()

    def __init__(self, settings: HttpSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._rng = random.Random()
        self.client = httpx.Client(
            base_url=settings.base_url,
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
            transport=transport,
            headers={"User-Agent": "campushub-connector/0.1"},
        )

    @classmethod
    def from_env(cls: type[S], **options: Any) -> S:
        """Configured from `CAMPUSHUB_<SOURCE>_URL` and the source's credential variables."""
        from campushub.connectors.settings import http_settings_from_env, require_env

        settings = http_settings_from_env(cls.name)
        credentials = [require_env(cls.name, variable) for variable in cls.credential_variables]
        return cls(settings, *credentials, **options)  # type: ignore[call-arg]

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    # -- hooks ---------------------------------------------------------------
    def authenticate(self, request: httpx.Request) -> None:
        """Add credentials to a request just before it is sent (and again on every retry)."""

    def on_unauthorized(self, response: httpx.Response) -> bool:
        """A 401 arrived; return True if credentials were renewed and the request may be retried."""
        return False

    def check(self, response: httpx.Response, url: str, page: str | None) -> None:
        """Raise for answers that are errors in this source's own convention."""

    # -- the request loop ----------------------------------------------------
    def fetch(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        *,
        page: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        accept: Callable[[httpx.Response], bool] = lambda response: response.is_success,
    ) -> T:
        """Send a request and parse its answer, retrying what may succeed on a second try.

        Retried: connection errors, timeouts, dropped connections, 5xx, 429 (honouring
        Retry-After) and answers that do not parse. Not retried: other 4xx, which a retry will
        not change; 401 gets one chance to renew credentials first.
        """
        policy = self.settings.retry
        started = time.monotonic()
        renewed = False
        attempt = 0
        while True:
            request = self.client.build_request(method, path, params=params, headers=headers, data=data)
            url = str(request.url.copy_with(query=None))
            try:
                self.authenticate(request)
                response = self._send(request, url, page)
                if response.status_code == 401 and not renewed and self.on_unauthorized(response):
                    renewed = True
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(
                        f"HTTP {response.status_code}", retry_after_seconds(response.headers.get("Retry-After"))
                    )
                if response.status_code in (401, 403):
                    raise AuthError(self.name, f"credentials refused (HTTP {response.status_code})", url=url, page=page)
                self.check(response, url, page)
                if not accept(response):
                    raise SourceError(self.name, f"unexpected HTTP {response.status_code}", url=url, page=page)
                try:
                    return parse(response)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                    raise _Retryable(f"malformed answer: {type(exc).__name__}: {str(exc)[:120]}") from exc
            except (httpx.TransportError, httpx.DecodingError, _Retryable) as exc:
                attempt += 1
                reason = str(exc) or type(exc).__name__
                retry_after = exc.retry_after if isinstance(exc, _Retryable) else None
                delay = policy.delay(attempt - 1, retry_after, self._rng)
                spent = time.monotonic() - started
                if attempt >= policy.attempts or spent + delay > policy.total_time:
                    error = MalformedPageError if reason.startswith("malformed") else SourceError
                    raise error(
                        self.name, f"gave up after {attempt} attempts in {spent:.1f}s: {reason}", url=url, page=page
                    ) from exc
                log.warning("%s: %s at %s (%s); retry %d in %.2fs", self.name, reason, url, page or "-", attempt, delay)
                time.sleep(delay)

    def _send(self, request: httpx.Request, url: str, page: str | None) -> httpx.Response:
        """Send and read the whole body within the request deadline."""
        deadline = time.monotonic() + self.settings.deadline
        response = self.client.send(request, stream=True)
        try:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"deadline of {self.settings.deadline}s exceeded", request=request)
            response._content = b"".join(chunks)  # what response.read() would set
        finally:
            response.close()
        return response

    def get_json(self, path: str, *, page: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.fetch("GET", path, lambda response: json.loads(response.content), page=page, params=params)

    def paginate(
        self,
        first: PageRequest,
        parse: Callable[[httpx.Response], T],
        following: Callable[[PageRequest, T], PageRequest | None],
    ) -> Iterator[tuple[PageRequest, T, bool]]:
        """Fetch page after page, each next page while the caller works on the current one.

        Yields (request, parsed page, whether it is the last page).

        `following(request, parsed)` says which page comes next (None: this was the last).
        Overlapping the source's time to answer with our time to check and load a page is
        where a connector wins back what its checks cost; at most two pages are in memory.
        """

        def fetch_page(request: PageRequest) -> T:
            return self.fetch("GET", request.path, parse, page=request.label, params=request.params)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-prefetch") as pool:
            request: PageRequest | None = first
            pending = pool.submit(fetch_page, first)
            while request is not None:
                parsed = pending.result()
                upcoming = following(request, parsed)
                if upcoming is not None:
                    pending = pool.submit(fetch_page, upcoming)
                yield request, parsed, upcoming is None
                request = upcoming

    # -- streams -------------------------------------------------------------
    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        """Every record of `stream` changed since `cursor` (all when None), page by page."""
        raise NotImplementedError

    def spec(self, stream: str) -> StreamSpec:
        try:
            return self.streams[stream]
        except KeyError:
            raise SourceError(self.name, f"no stream {stream!r}; streams: {', '.join(self.streams)}") from None

    def batch(self, stream: str, page: str, records: list[Record], cursor: str | None) -> Batch:
        return Batch(self.name, stream, page, records, cursor, dt.datetime.now(dt.UTC))
