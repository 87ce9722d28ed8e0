"""What every source connector shares: the HTTP client, retries, deadlines, record checks.

A connector turns one source system's API into a stream of `Batch`es. A batch is one page of
`Record`s plus the cursor that becomes safe to store once that page, and every page before it,
has been committed by the caller. Records that fail their stream's checks are not dropped: they
come out with `problems` set and the raw payload intact, so the pipeline can quarantine them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import filterfalse, repeat
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

import httpx

from campushub.reference.codes import code_table
from campushub.reference.identity import (
    DOCUMENT_TYPES,
    RESIDENT_ID,
    id_document_problem,
    id_number_as_written,
    id_number_problem,
)

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


class Retryable(Exception):
    """Raised inside an attempt (see `HttpSource.attempts`): this try failed, another may not."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after

    @classmethod
    def malformed(cls, error: Exception) -> Retryable:
        """An answer that does not parse: damaged on the way, or cut short."""
        return cls(f"malformed answer: {type(error).__name__}: {str(error)[:120]}")


class _Renewed(Retryable):
    """Credentials were renewed after a 401: try again at once, and not as a failure."""


class Attempt:
    """One try of a request, as a context: a retryable failure inside it is kept for the loop
    in `HttpSource.attempts` to judge; anything else propagates."""

    def __init__(self, again: bool, renewed: bool) -> None:
        self.again = again  # an earlier try of this request failed (or renewed credentials)
        self.renewed = renewed  # credentials were renewed for this request already
        self.failure: httpx.TransportError | httpx.DecodingError | Retryable | None = None
        self.progressed = False

    def progress(self) -> None:
        """This try handed part of a streamed answer out: the caller's time with it is not the
        source's, so a failure after it gets the policy's attempts and time afresh."""
        self.progressed = True

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> bool:
        if isinstance(error, httpx.TransportError | httpx.DecodingError | Retryable):
            self.failure = error
            return True
        return False


# ---------------------------------------------------------------------------- records
class Record(NamedTuple):
    """One record as the source sent it, with the reasons it cannot be trusted (if any).

    A named tuple rather than a dataclass: one is made for every record of every sync, and a
    tuple is the cheapest immutable object Python builds.
    """

    stream: str
    key: str | None
    data: dict[str, Any]
    problems: tuple[str, ...] = ()
    # A fingerprint of the record as the source sent it, where one is cheaper to take than an
    # encoding of `data` (a CSV row's fields): raw landing compares it instead, and encodes only
    # the records that changed — a whole export is mostly the same rows again.
    digest: str | None = None

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
    pull: int = 1  # which pull of its stream: one started again (`pulled_again_when_shifted`) counts on


# ---------------------------------------------------------------------------- dates
# What each date directive may look like on the fast path: ASCII digits, fixed width, within
# its range. Stricter than strptime, so whatever matches strptime accepts too (bar a day past
# the 28th, checked against its month); anything else goes to strptime, which has the last word.
_DIRECTIVES = {
    "%Y": "(?P<Y>(?!0000)[0-9]{4})",
    "%m": "(?P<m>0[1-9]|1[0-2])",
    "%d": "(?P<d>0[1-9]|[12][0-9]|3[01])",
    "%H": "(?:[01][0-9]|2[0-3])",
    "%M": "[0-5][0-9]",
    "%S": "[0-5][0-9]",
    "%f": "[0-9]{1,6}",
    "%z": "(?:[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9]|Z)",
}
_EARLY_DAY = "(?P<d>0[1-9]|1[0-9]|2[0-8])"  # a day every month has


@lru_cache(maxsize=64)
def _date_pattern(fmt: str, early_days_only: bool = False) -> re.Pattern[str] | None:
    """The fast path's regular expression for `fmt`; None for a format it does not cover
    (other directives, a field set twice, strptime's loose whitespace)."""
    pattern: list[str] = []
    seen: set[str] = set()
    index = 0
    while index < len(fmt):
        directive = fmt[index : index + 2]
        if directive in _DIRECTIVES and directive not in seen:
            pattern.append(_EARLY_DAY if directive == "%d" and early_days_only else _DIRECTIVES[directive])
            seen.add(directive)
            index += 2
        elif fmt[index] == "%" or fmt[index].isspace():
            return None
        else:
            pattern.append(re.escape(fmt[index]))
            index += 1
    return re.compile("".join(pattern))


def _fast_date_check(fmt: str) -> Callable[[str], bool] | None:
    """A check that is sufficient, not necessary: True means strptime would accept the value,
    False means "ask strptime". None for a format `_date_pattern` does not cover."""
    compiled = _date_pattern(fmt)
    if compiled is None:
        return None
    match = compiled.fullmatch
    if "d" not in compiled.groupindex:  # without a day every match is a real date
        return lambda value: match(value) is not None

    def check(value: str) -> bool:
        found = match(value)
        if found is None:
            return False
        if found["d"] <= "28":
            return True
        fields = found.groupdict()  # strptime's defaults for the fields the format leaves out
        try:
            dt.date(int(fields.get("Y") or 1900), int(fields.get("m") or 1), int(fields["d"]))
        except ValueError:
            return False
        return True

    return check


def _parses_strptime(value: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


KNOWN_DATES = 1024  # valid values remembered per date field


def date_check(fmt: str) -> Callable[[str], bool]:
    """Whether a string is a valid date in `fmt`, exactly as `datetime.strptime` decides.

    strptime costs microseconds a call, so it is the last resort: a regular expression
    compiled once per format vouches for the usual shape, and valid values already seen (the
    same due date on every bill of an export) are remembered, up to a bound, since most
    timestamps are unique.
    """
    fast = _fast_date_check(fmt)
    known: set[str] = set()

    def check(value: str) -> bool:
        if value in known:
            return True
        if not ((fast is not None and fast(value)) or _parses_strptime(value, fmt)):
            return False
        if len(known) < KNOWN_DATES:
            known.add(value)
        return True

    return check


@dataclass(frozen=True)
class StreamSpec:
    """A stream's record contract, declared as data and checked the same way for every source."""

    name: str
    key: tuple[str, ...]
    required: tuple[str, ...] = ()
    dates: Mapping[str, str] = field(default_factory=dict)  # field -> strptime format
    # ID number field -> the field naming its document type, a code of JY/T 1001's table (checked
    # as any code is); a record that names none holds a resident identity number.
    id_numbers: Mapping[str, str] = field(default_factory=dict)
    codes: Mapping[str, str | frozenset[str]] = field(default_factory=dict)  # field -> table or values
    integers: tuple[str, ...] = ()  # e.g. money in fen, sent as strings of digits

    def key_of(self, data: Mapping[str, Any]) -> str | None:
        """The record's key: its key fields joined by '|', None when one is missing."""
        return self.keyer(data)

    @cached_property
    def keyer(self) -> Callable[[Mapping[str, Any]], str | None]:
        """`key_of`, compiled once per stream."""
        return _compile_keyer(self.key)

    @cached_property
    def _code_domains(self) -> tuple[tuple[str, Container[str]], ...]:
        codes = {**{kind: DOCUMENT_TYPES for kind in self.id_numbers.values()}, **self.codes}
        return tuple(
            (name, code_table(domain) if isinstance(domain, str) else domain) for name, domain in codes.items()
        )

    @cached_property
    def checker(self) -> Callable[[Mapping[str, Any]], list[str]]:
        """`problems`, compiled once per stream: the hot path of every sync."""
        return _compile_checker(self)

    def problems(self, data: Mapping[str, Any]) -> list[str]:
        """Every rule the record breaks, each naming the field (never an ID number's value)."""
        return self.checker(data)

    @cached_property
    def clean_page_keys(self) -> Callable[[list[Any]], list[str] | None]:
        """The keys of a page whose every record keeps every rule, in one column-wise pass;
        None when that cannot be vouched for, and the page must be checked record by record.

        The usual page is clean, and checking whole columns with C-level builtins costs a
        fraction of checking record by record. The verdict is only ever "clean" or "don't
        know": the reasons for a bad record always come from `problems`.
        """
        return _compile_page_check(self)


_EMPTY = (None, "")


def _compile_checker(spec: StreamSpec) -> Callable[[Mapping[str, Any]], list[str]]:
    """A closure over the spec's rules with everything that can be done once done once: code
    tables loaded, date formats turned into checks; per record only plain loops remain."""
    required = spec.required
    dates = tuple((name, fmt, date_check(fmt)) for name, fmt in spec.dates.items())
    id_numbers = tuple(spec.id_numbers.items())
    codes = spec._code_domains
    integers = spec.integers

    def problems(data: Mapping[str, Any]) -> list[str]:
        # Each loop tests the common, valid case first and builds a message only on failure.
        get = data.get
        missing = not all(map(get, required))  # a falsy value may still be present (a 0)
        found = [f"missing {name}" for name in required if get(name) in _EMPTY] if missing else []
        for name, fmt, valid in dates:
            value = get(name)
            if isinstance(value, str):
                if value == "" or valid(value):
                    continue
            elif value is None:
                continue
            found.append(f"{name}: {value!r} is not a valid date ({fmt})")
        for name, kind_field in id_numbers:
            value = get(name)
            if value not in _EMPTY:
                problem = (
                    id_document_problem(get(kind_field), id_number_as_written(value))
                    if isinstance(value, str)
                    else "id number: not a string"
                )
                if problem:
                    found.append(f"{name}: {problem}")
        for name, allowed in codes:
            value = get(name)
            if _is_code(value, allowed) or value in _EMPTY:
                continue
            found.append(f"{name}: unknown code {value!r}")
        for name in integers:
            value = get(name)
            if type(value) is int or value is None or (isinstance(value, str) and (value == "" or _is_integer(value))):
                continue
            found.append(f"{name}: {value!r} is not a whole number")
        return found

    return problems


_is_empty = frozenset(_EMPTY).__contains__
Column = Sequence[Any]


def _present(column: Column) -> list[Any]:
    return list(filterfalse(_is_empty, column))


def _all_of_type(values: Iterable[Any], kind: type) -> bool:
    return set(map(type, values)) <= {kind}


def _dates_valid(fmt: str) -> Callable[[Column], bool]:
    valid = date_check(fmt)
    early = _date_pattern(fmt, early_days_only=True)

    def dates(column: Column) -> bool:
        values = _present(column)
        if not _all_of_type(values, str):
            return False
        # The regex vouches, in C, for every value up to the 28th; the rest go one by one.
        doubtful = values if early is None else filterfalse(early.fullmatch, values)
        return all(map(valid, doubtful))

    return dates


_RESIDENT_KINDS = frozenset((RESIDENT_ID, *_EMPTY))  # what `document_type` reads as a resident card


def _id_numbers_valid(numbers: Column, kinds: Column) -> bool:
    """The page's numbers as sent: one written another way (a lower-case x) sends the page to
    `problems`, which reads each number as its document prints it."""
    values = _present(numbers)
    if not _all_of_type(values, str):
        return False
    if _RESIDENT_KINDS.issuperset(kinds):  # the usual page: resident identity numbers alone
        return not any(map(id_number_problem, values))
    return not any(
        id_document_problem(kind, number) for number, kind in zip(numbers, kinds, strict=True) if number not in _EMPTY
    )


def _codes_valid(allowed: Container[str]) -> Callable[[Column], bool]:
    domain = frozenset((*allowed, *_EMPTY)) if isinstance(allowed, Iterable) else None

    def codes(column: Column) -> bool:
        return domain.issuperset(column) if domain is not None else all(map(allowed.__contains__, _present(column)))

    return codes


def _integers_valid(column: Column) -> bool:
    values = _present(column)
    kinds = set(map(type, values))
    # Negative numbers as text are rare: "don't know" sends them through `problems`.
    return kinds <= {int} or (kinds == {str} and all(map(str.isdigit, values)))


def _compile_page_check(spec: StreamSpec) -> Callable[[list[Any]], list[str] | None]:
    fields = tuple(
        dict.fromkeys(
            (
                *spec.key,
                *spec.required,
                *spec.dates,
                *spec.id_numbers,
                *spec.id_numbers.values(),
                *spec.codes,
                *spec.integers,
            )
        )
    )
    at = {name: n for n, name in enumerate(fields)}
    rules: list[tuple[int, Callable[[Column], bool]]] = [(at[name], all) for name in spec.required]
    rules += [(at[name], _dates_valid(fmt)) for name, fmt in spec.dates.items()]
    id_rules = [(at[number], at[kind]) for number, kind in spec.id_numbers.items()]
    rules += [(at[name], _codes_valid(allowed)) for name, allowed in spec._code_domains]
    rules += [(at[name], _integers_valid) for name in spec.integers]
    key_columns = [at[name] for name in spec.key]
    fetch = itemgetter(*fields)

    def clean_page_keys(rows: list[Any]) -> list[str] | None:
        if not rows:
            return []
        if set(map(type, rows)) != {dict}:
            return None
        try:
            # Rows to columns in C; a row without one of the fields raises KeyError.
            columns = list(zip(*map(fetch, rows), strict=True)) if len(fields) > 1 else [tuple(map(fetch, rows))]
            if not all(rule(columns[n]) for n, rule in rules):
                return None
            if not all(_id_numbers_valid(columns[number], columns[kind]) for number, kind in id_rules):
                return None
            return _column_keys([columns[n] for n in key_columns])
        except (KeyError, TypeError):  # a missing field, an unhashable value: ask `problems`
            return None

    return clean_page_keys


def _column_keys(parts: list[Column]) -> list[str] | None:
    """The keys `key_of` would give, when every part is a non-empty string (or, for a
    one-field key, every part an int); None otherwise."""
    if not all(map(all, parts)):
        return None
    if len(parts) == 1:
        (column,) = parts
        if _all_of_type(column, str):
            return list(column)
        return list(map(str, column)) if _all_of_type(column, int) else None
    if not all(_all_of_type(column, str) for column in parts):
        return None
    return list(map("|".join, zip(*parts, strict=True)))


def _compile_keyer(fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], str | None]:
    """The key function of a stream: a C-level fast path for the usual key of non-empty strings,
    and the general rule (any value but None or "", as text) for the rest."""

    def general(data: Mapping[str, Any]) -> str | None:
        parts = [data.get(name) for name in fields]
        if any(part in _EMPTY for part in parts):
            return None
        return "|".join(map(str, parts))

    if len(fields) == 1:
        (name,) = fields

        def single(data: Mapping[str, Any]) -> str | None:
            value = data.get(name)
            if type(value) is str:
                return value or None
            return str(value) if type(value) is int else general(data)

        return single

    fetch = itemgetter(*fields)

    def composite(data: Mapping[str, Any]) -> str | None:
        try:
            parts = fetch(data)
            if all(parts):
                return "|".join(parts)  # TypeError unless every part is a string
        except (KeyError, TypeError):
            pass
        return general(data)

    return composite


def _is_code(value: Any, allowed: Container[str]) -> bool:
    try:
        return value in allowed
    except TypeError:  # a list or an object where a code belongs: unhashable, and no code
        return False


def _is_integer(value: str) -> bool:
    return value.isdigit() or (value[:1] == "-" and value[1:].isdigit())


DUPLICATE = "duplicate: the same record was already sent"


# Pulls of an offset-paged stream begun anew because records were deleted while it was paged,
# before it fails (`BaseSource.pulled_again_when_shifted`).
SHIFTED_PULLS = 3


class PagesShifted(Exception):
    """An offset-paged stream's total moved between its pages: a deletion, which pinning the
    pages to the first page's time does not hold back, shifted the later pages by a record —
    and one record would cross a page boundary unread."""

    def __init__(self, message: str, page: str) -> None:
        super().__init__(message)
        self.page = page


class SteadyTotal:
    """The total an offset-paged stream gives with each page: the first page's, or `PagesShifted`."""

    def __init__(self) -> None:
        self.first: int | None = None

    def check(self, total: int, page: int) -> None:
        if self.first is None:
            self.first = total
        elif total != self.first:
            raise PagesShifted(f"{self.first} records at page 1, {total} at page {page}", f"page {page}")


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

    def page(self, rows: list[Any]) -> list[Record]:
        """The page's rows checked, in order, as records."""
        self.previous = self.current
        keys = self.spec.clean_page_keys(rows)
        if keys is not None:
            current = set(keys)
            if len(current) == len(keys) and current.isdisjoint(self.previous):
                self.current = current
                return _clean_records(self.spec.name, keys, rows)
        self.current = set()
        return self._checked(rows)

    def _checked(self, rows: list[Any]) -> list[Record]:
        """Record by record, with every reason: pages the column-wise check cannot vouch for."""
        previous, current = self.previous, self.current
        name, check, key_of = self.spec.name, self.spec.checker, self.spec.keyer
        records: list[Record] = []
        append = records.append
        for data in rows:
            if not isinstance(data, dict):
                append(Record(name, None, {"value": data}, ("not an object",)))
                continue
            problems = check(data)
            key = key_of(data)
            if key is not None:
                if key in previous or key in current:
                    problems.append(DUPLICATE)
                current.add(key)
            append(Record(name, key, data, tuple(problems) if problems else ()))
        return records


def _clean_records(stream: str, keys: list[str], rows: list[dict[str, Any]]) -> list[Record]:
    # tuple.__new__ builds the named tuples in C; calling Record() runs a Python-level __new__.
    return list(map(tuple.__new__, repeat(Record), zip(repeat(stream), keys, rows, repeat(()), repeat(None))))


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
    def attempts(self, url: str, page: str | None) -> Iterator[Attempt]:
        """The tries of one request, under the retry policy:

            for attempt in self.attempts(url, page):
                with attempt:
                    ...  # send, check, parse; the loop ends when a block completes

        Retried: connection errors, timeouts, dropped connections, bodies that do not decode
        and whatever the block raises as `Retryable` (5xx, 429 honouring Retry-After, answers
        that do not parse) — with exponential backoff and full jitter, until the policy's
        attempts or time run out; then SourceError (MalformedPageError for answers that never
        parsed) names the URL and page. Anything else the block raises propagates at once. A
        try that handed out part of a streamed answer (`Attempt.progress`) starts the count anew.
        """
        policy = self.settings.retry
        started = time.monotonic()
        failures = 0
        renewed = again = False
        while True:
            attempt = Attempt(again, renewed)
            yield attempt
            exc = attempt.failure
            if exc is None:
                return
            again = True
            if isinstance(exc, _Renewed):
                renewed = True
                continue
            if attempt.progressed:
                started, failures = time.monotonic(), 0
            failures += 1
            reason = str(exc) or type(exc).__name__
            retry_after = exc.retry_after if isinstance(exc, Retryable) else None
            delay = policy.delay(failures - 1, retry_after, self._rng)
            spent = time.monotonic() - started
            if failures >= policy.attempts or spent + delay > policy.total_time:
                error = MalformedPageError if reason.startswith("malformed") else SourceError
                raise error(
                    self.name, f"gave up after {failures} attempts in {spent:.1f}s: {reason}", url=url, page=page
                ) from exc
            log.warning("%s: %s at %s (%s); retry %d in %.2fs", self.name, reason, url, page or "-", failures, delay)
            time.sleep(delay)

    def judge(
        self, response: httpx.Response, url: str, page: str | None, accept: Callable[[httpx.Response], bool]
    ) -> None:
        """Raise for an answer that is not one to parse: Retryable for 5xx and 429, AuthError
        for 401 and 403, the source's own error convention (`check`), then `accept`."""
        if response.status_code == 429 or response.status_code >= 500:
            raise Retryable(f"HTTP {response.status_code}", retry_after_seconds(response.headers.get("Retry-After")))
        if response.status_code in (401, 403):
            raise AuthError(self.name, f"credentials refused (HTTP {response.status_code})", url=url, page=page)
        self.check(response, url, page)
        if not accept(response):
            raise SourceError(self.name, f"unexpected HTTP {response.status_code}", url=url, page=page)

    def renew_once(self, response: httpx.Response, attempt: Attempt) -> None:
        """After a 401, renew the credentials once per request and try again at once."""
        if response.status_code == 401 and not attempt.renewed and self.on_unauthorized(response):
            raise _Renewed("credentials renewed")

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
        """Send a request and parse its answer, retrying what may succeed on a second try
        (see `attempts`). Not retried: 4xx other than 429, which a retry will not change; a 401
        gets one chance to renew credentials first."""
        request = self.client.build_request(method, path, params=params, headers=headers, data=data)
        url = str(request.url.copy_with(query=None))
        for attempt in self.attempts(url, page):
            with attempt:
                if attempt.again:  # built afresh, as a client sends it: cookies set meanwhile, say
                    request = self.client.build_request(method, path, params=params, headers=headers, data=data)
                self.authenticate(request)
                response = self._send(request, url, page)
                self.renew_once(response, attempt)
                self.judge(response, url, page, accept)
                try:
                    return parse(response)
                # (AttributeError: an answer of another shape than the parser expects — a list
                # where an object should be — met as `.get` on it.)
                except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
                    raise Retryable.malformed(exc) from exc
        raise AssertionError("attempts end in a return or an error")

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

        request, parsed = first, fetch_page(first)
        upcoming = following(request, parsed)
        if upcoming is not None:  # a one-page stream (most reference data) needs no thread
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-prefetch") as pool:
                while upcoming is not None:
                    pending = pool.submit(fetch_page, upcoming)
                    yield request, parsed, False
                    request, parsed = upcoming, pending.result()
                    upcoming = following(request, parsed)
        yield request, parsed, True

    # -- streams -------------------------------------------------------------
    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        """Every record of `stream` changed since `cursor` (all when None), page by page."""
        raise NotImplementedError

    def pulled_again_when_shifted(self, stream: str, pull: Callable[[], Iterator[Batch]]) -> Iterator[Batch]:
        """The batches of `pull()`, a pull of an offset-paged stream that raises `PagesShifted`
        when its total moves: then the pull starts again from the first page — what it yields
        again lands once — and after `SHIFTED_PULLS` pulls in a row it fails, naming the
        stream, rather than miss a record (which a full pull would count deleted)."""
        for attempt in range(1, SHIFTED_PULLS + 1):
            try:
                for batch in pull():
                    yield batch if attempt == 1 else dataclasses.replace(batch, pull=attempt)
                return
            except PagesShifted as shifted:
                if attempt == SHIFTED_PULLS:
                    reason = f"{stream}: {shifted}, on {SHIFTED_PULLS} pulls in a row"
                    raise SourceError(self.name, reason, page=shifted.page) from None
                log.warning("%s %s: %s; pulling it again from the first page", self.name, stream, shifted)

    def spec(self, stream: str) -> StreamSpec:
        try:
            return self.streams[stream]
        except KeyError:
            raise SourceError(self.name, f"no stream {stream!r}; streams: {', '.join(self.streams)}") from None

    def batch(self, stream: str, page: str, records: list[Record], cursor: str | None) -> Batch:
        return Batch(self.name, stream, page, records, cursor, dt.datetime.now(dt.UTC))
