"""Where and how an operation executes: on the event loop or a few threads (`Executor`), and
graphql-core's execution with a short cut for the commonest field there is.

Most fields of an answer are scalars read off their parent object by graphene's default
resolver, without arguments: a prefill's sixty `name`, `value`, `source`, `asOf` and `quality`.
For each, graphql-core builds a resolve-info record, reads the (absent) arguments, calls the
resolver through two layers of indirection and dispatches on the return type before it
serialises — most of a prefill's execution time. `PlainLeafExecution` reads and serialises
such a field directly, an object made only of such fields in one pass, and a list of such
objects without completing each item on its own. Everything else, and any value that is null
or fails to serialise (the errors and their paths), goes the standard way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple, TypeVar

import anyio
import anyio.to_thread
from graphene.types.resolver import dict_or_attr_resolver
from graphql import (
    ExecutionContext,
    FieldNode,
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
)
from graphql.pyutils import Path
from sqlalchemy import Connection, Engine

T = TypeVar("T")
# Worker threads an operation may run on, per worker process (default "0": the event loop itself).
THREADS_SETTING = "CAMPUSHUB_API_THREADS"


class Executor:
    """Runs an operation — CPU-bound Python holding the GIL, but for its SQL calls — on the
    event loop, or with `CAMPUSHUB_API_THREADS=N` on N threads.

    Handing an operation to a thread adds the hand-over and a contest for the GIL with the event
    loop, and on two cores that costs more than overlapping the statements' waits saves. At the
    university profile, prefill at saturation, inline against four threads:
    - SQLite: 1.74 → 1.49 ms of CPU a prefill, and the p99 at 800 req/s 66 → 9 ms;
    - PostgreSQL: 1.70 → 1.40 ms of the API's CPU and 0.56 → 0.43 ms of the database's (fewer
      backends busy at once), and the p99 at 800 req/s from the API's limit (280 ms) to 30 ms.
    Inline, each statement is bounded by the request's deadline (`deadlines.deadline`): nothing
    can abandon an operation running on the event loop half-way.
    """

    def __init__(self, threads: int, timeout_s: float) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self._limiter: anyio.CapacityLimiter | None = None  # made on the worker's event loop

    @classmethod
    def from_env(cls, timeout_s: float) -> Executor:
        return cls(int(os.environ.get(THREADS_SETTING) or 0), timeout_s)

    @property
    def inline(self) -> bool:
        return self.threads == 0

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)`; TimeoutError if a thread's run outlasts the timeout (an inline
        run is bounded by its statements' deadline instead)."""
        if self.inline:
            return function(*args)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await asyncio.wait_for(anyio.to_thread.run_sync(function, *args, limiter=self._limiter), self.timeout_s)


class HeldConnection:
    """A connection a worker keeps for work it does one piece at a time on its event loop (the
    queries' reads; in autocommit, the audit writes): no checkout from the pool and no reset of
    its isolation level on the way back, per use — together 49,000 instructions a prefill, of
    3.43 million. After a failure it is given back, and the next use takes a fresh one."""

    def __init__(self, engine: Engine, *, autocommit: bool = True) -> None:
        self._engine = engine
        self._autocommit = autocommit
        self._connection: Connection | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[Connection]:
        if self._connection is not None and self._connection.invalidated:  # (sent a cancel: `deadlines`)
            self.close()
        if self._connection is None:
            connection = self._engine.connect()
            try:
                if self._autocommit:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        try:
            yield self._connection
            # In autocommit no transaction is left to end: SQLAlchemy's own bookkeeping. (Else
            # what a pool's check-in would have done: nothing is carried into the next use.)
            self._connection.rollback()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


class PlainLeaf(NamedTuple):
    attribute: str
    default: Any
    leaf: GraphQLScalarType | GraphQLEnumType


def plain_leaves(schema: GraphQLSchema) -> dict[tuple[str, str], PlainLeaf]:
    """(type, field) -> how to read it, for every field the short cut may take."""
    found = {}
    for type_name, graphql_type in schema.type_map.items():
        if not isinstance(graphql_type, GraphQLObjectType) or type_name.startswith("__"):
            continue
        for field_name, field in graphql_type.fields.items():
            resolve = field.resolve
            leaf = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
            default_resolver = isinstance(resolve, partial) and resolve.func is dict_or_attr_resolver
            if default_resolver and not field.args and isinstance(leaf, GraphQLScalarType | GraphQLEnumType):
                attribute, default = resolve.args
                found[type_name, field_name] = PlainLeaf(attribute, default, leaf)
    return found


class PlainLeafExecution(ExecutionContext):
    """Set `plain` (from `plain_leaves`) on the class before use: one schema per process."""

    plain: dict[tuple[str, str], PlainLeaf] = {}  # noqa: RUF012 - filled once, read by every request

    def execute_fields(
        self, parent_type: GraphQLObjectType, source_value: Any, path: Path, fields: dict[str, list[FieldNode]]
    ) -> Any:
        """An object whose every asked-for field is a plain leaf with a value (a prefill's
        fields: name, value, source, asOf, quality) is answered in one pass, without a path or a
        resolve-info per field; any other object, or one holding a null or a value that does not
        serialise, the standard way."""
        if self.middleware_manager is None:
            answer = self._plain_object(parent_type, source_value, fields)
            if answer is not None:
                return answer
        return super().execute_fields(parent_type, source_value, path, fields)

    def complete_list_value(
        self,
        return_type: GraphQLList[Any],
        field_nodes: list[FieldNode],
        info: GraphQLResolveInfo,
        path: Path,
        result: Any,
    ) -> Any:
        """A list of such objects (a prefill's thirteen-odd fields) is answered item by item in
        one pass too, without graphql-core's completion of each item: its path, its dispatch on
        the item's type, its look-up of the selection. A list holding anything else — a null, an
        error or an awaitable in place of an item, an object with another kind of field — goes
        the standard way, whole."""
        item_type = return_type.of_type
        if isinstance(item_type, GraphQLNonNull):
            item_type = item_type.of_type
        plain_items = isinstance(item_type, GraphQLObjectType) and item_type.is_type_of is None
        if self.middleware_manager is None and plain_items and isinstance(result, list):
            fields = self.collect_subfields(item_type, field_nodes)
            answers = []
            for item in result:
                if item is None or isinstance(item, Exception) or self.is_awaitable(item):
                    break
                answer = self._plain_object(item_type, item, fields)
                if answer is None:
                    break
                answers.append(answer)
            else:
                return answers
        return super().complete_list_value(return_type, field_nodes, info, path, result)

    def _plain_object(
        self, parent_type: GraphQLObjectType, source: Any, fields: dict[str, list[FieldNode]]
    ) -> dict[str, Any] | None:
        """The object's answer if every asked-for field is a plain leaf holding a value; None otherwise."""
        answer = {}
        for response_name, field_nodes in fields.items():
            serialized = self._plain_value(parent_type, source, field_nodes[0])
            if serialized is None:
                return None
            answer[response_name] = serialized
        return answer

    def execute_field(
        self, parent_type: GraphQLObjectType, source: Any, field_nodes: list[FieldNode], path: Path
    ) -> Any:
        if self.middleware_manager is None:
            serialized = self._plain_value(parent_type, source, field_nodes[0])
            if serialized is not None:
                return serialized
        return super().execute_field(parent_type, source, field_nodes, path)

    def _plain_value(self, parent_type: GraphQLObjectType, source: Any, node: FieldNode) -> Any:
        """The field's serialised value if it is a plain leaf holding one; None otherwise."""
        plain = self.plain.get((parent_type.name, node.name.value))
        if plain is None or node.arguments:
            return None
        try:
            if isinstance(source, dict):
                value = source.get(plain.attribute, plain.default)
            else:
                value = getattr(source, plain.attribute, plain.default)
            serialized = None if value is None else plain.leaf.serialize(value)
        except Exception:  # the standard way reports it, located in the answer
            return None
        return None if serialized is Undefined else serialized
