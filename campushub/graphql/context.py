"""One request's context: who asks, in which role, over which connection, and what it read.

Every authorization decision goes through `RequestContext.access` — one function for single
lookups, list edges, node ids and `me` alike — so no path to a record can skip it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from graphql import GraphQLError
from sqlalchemy import Connection, bindparam, select

from campushub.graphql.audit import AuditTrail
from campushub.graphql.auth import Principal
from campushub.graphql.forms import Form, catalog
from campushub.graphql.permissions import ROLES, Role
from campushub.graphql.prefill import Records, load_own, own_anchor, own_person_statement
from campushub.models.engine import execute_built
from campushub.models.unified import OrgUnit

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ID_NUMBER = "idNumber"  # masked everywhere but in a form that declares it needs the full number


class Forbidden(GraphQLError):
    def __init__(self, message: str = "not permitted") -> None:
        super().__init__(message, extensions={"code": "FORBIDDEN"})


@dataclass(frozen=True, slots=True)
class Access:
    """What the caller may see of one record, and why (the audited purpose)."""

    entity: str
    subject: int | None  # the person the record is about
    purpose: str
    fields: frozenset[str] | None  # None: every field (the caller's own record)
    masked: frozenset[str]

    def allows(self, name: str) -> bool:
        return self.fields is None or name in self.fields


class BatchLoader(Generic[K, V]):
    """A per-request DataLoader for synchronous resolvers: a list resolver announces the keys
    its items will ask for (`expect`), and the first `load` fetches all of them in one query.
    Loaded values are cached for the rest of the request."""

    def __init__(self, fetch: Callable[[list[K]], dict[K, V]]) -> None:
        self._fetch = fetch
        self._cache: dict[K, V | None] = {}
        self._pending: set[K] = set()

    def expect(self, keys: Iterable[K | None]) -> None:
        self._pending.update(key for key in keys if key is not None and key not in self._cache)

    def load(self, key: K | None) -> V | None:
        if key is None:
            return None
        if key not in self._cache:
            batch = [*self._pending, key] if key not in self._pending else list(self._pending)
            self._pending.clear()
            found = self._fetch(batch)
            for wanted in batch:
                self._cache[wanted] = found.get(wanted)
        return self._cache[key]


# Built once: building a statement costs more than running it.
_ORG_UNIT = select(OrgUnit.id).where(OrgUnit.code == bindparam("key"))


@dataclass
class RequestContext:
    principal: Principal
    connection: Connection
    audit: AuditTrail
    request_id: str
    development: bool = False
    loaders: dict[str, BatchLoader[Any, Any]] = field(default_factory=dict)

    @property
    def role(self) -> Role:
        return ROLES[self.principal.role]

    @cached_property
    def person_id(self) -> int | None:
        """The caller's own golden record, found by the 学号 or 工号 the token names."""
        query = own_person_statement(own_anchor(self.principal.role))
        return execute_built(self.connection, query, {"own_key": self.principal.subject}).scalar()

    def own_records(self, entities: frozenset[str]) -> Records | None:
        """The caller's own records for `entities` (None: no golden record of them yet),
        learning who they are from the same statement rather than one of its own."""
        found = load_own(self.connection, own_anchor(self.principal.role), self.principal.subject, entities)
        # What `person_id` would have found: cached_property keeps its value in the instance.
        self.__dict__["person_id"] = found[0] if found else None
        return found[1] if found else None

    @cached_property
    def org_unit_id(self) -> int | None:
        if not self.principal.org_unit:
            return None
        return execute_built(self.connection, _ORG_UNIT, {"key": self.principal.org_unit}).scalar()

    def loader(self, name: str, fetch: Callable[[list[Any]], dict[Any, Any]]) -> BatchLoader[Any, Any]:
        if name not in self.loaders:
            self.loaders[name] = BatchLoader(fetch)
        return self.loaders[name]

    def access(self, entity: str, subject: int | None, org_unit_id: int | None) -> Access | None:
        """May the caller read this record of `entity` about `subject` (held by `org_unit_id`)?"""
        role = self.role
        # The cheap test first: an officer's department list never costs a look-up of who they are.
        if entity in role.self_entities and subject is not None and subject == self.person_id:
            return Access(entity, subject, "self", None, frozenset({ID_NUMBER}))
        grant = role.grant(entity)
        if grant is None:
            return None
        if grant.scope == "own_college" and (org_unit_id is None or org_unit_id != self.org_unit_id):
            return None
        return Access(entity, subject, f"department:{entity}", grant.fields, grant.masked | {ID_NUMBER})

    def usable_form(self, form_id: str) -> Form:
        """A form of the catalog the caller's role may use; refused (and audited) otherwise."""
        form = catalog().get(form_id)
        if form is None:
            raise GraphQLError(f"no form {form_id!r}", extensions={"code": "NOT_FOUND"})
        if self.principal.role not in form.roles:
            why = f"{self.principal.role}: form not for role"
            self.audit.denied(self.person_id, "form", (form.id,), f"form:{form.id}", why)
            raise Forbidden(f"form {form_id!r} is not available to role {self.principal.role}")
        return form

    def refuse(self, entity: str, subject: int | None, what: str, fields: Iterable[str] = ("*",)) -> Forbidden:
        """Audit a refused attempt and return the error to raise."""
        self.audit.denied(subject, entity, tuple(fields), f"department:{entity}", f"{self.principal.role}: {what}")
        return Forbidden(f"{entity}: not permitted for role {self.principal.role}")
