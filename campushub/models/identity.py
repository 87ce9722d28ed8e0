"""Identity resolution: one `person` per human being across the four systems.

1. Academic affairs and HR rows that carry the same valid ID number (compared by keyed hash)
   are one person — a member of staff who is also a student is one person with two roles —
   unless their names disagree: then the rows do not merge, and a conflict goes to a steward.
2. A card links to the person behind its holder's 学号 or 工号, unless the name on the card
   is none of the names that person is known by: again a conflict, not a merge.
3. Each person's golden fields are chosen by the survivorship rules, with provenance, and
   every disagreement between sources is logged with the value that won and why.

Only identities that changed since the last resolution (`resolved` false) are looked at, with
whatever else shares their ID number, the cards of those holders, and records a steward has
since decided to merge — so an incremental run costs what changed.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Row, String, Text, bindparam, cast, func, insert, select, text

from campushub.models.base import utcnow
from campushub.models.ingest import bulk_append, bulk_update, bulk_upsert, upsert
from campushub.models.survivorship import Candidate, choose, rules
from campushub.models.unified import (
    ROLE_TABLES,
    Conflict,
    FieldProvenance,
    Person,
    SourceIdentity,
)

PERSON_FIELDS = tuple(rules()["person"])
_CHUNK = 900  # stay under SQLite's bound-parameter limit in IN lists
PEOPLE_SOURCES = {"academic", "hr"}  # the systems whose records are people (cards link to them)


@dataclass
class ResolveResult:
    identities: int = 0
    persons_created: int = 0
    persons_updated: int = 0
    linked: int = 0
    conflicts_opened: int = 0
    field_disagreements: int = 0
    touched_persons: set[int] = field(default_factory=set)

    def metadata(self) -> dict[str, Any]:
        return {
            "identities_resolved": self.identities,
            "persons_created": self.persons_created,
            "persons_updated": self.persons_updated,
            "links": self.linked,
            "conflicts_opened": self.conflicts_opened,
            "field_disagreements_logged": self.field_disagreements,
        }


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _select_in(connection: Connection, column: Any, values: Iterable[Any], *where: Any) -> list[Row[Any]]:
    """The rows of `column`'s table whose `column` is one of `values` (and `where` holds).

    PostgreSQL: one statement, the values as one JSON array (encoded in C by orjson). An IN list
    is a bound parameter per value, which SQLAlchemy renders and psycopg parses into the
    statement anew for every list — a sixth of a first load's person master. SQLite caps a
    statement's parameters: IN lists of a chunk each."""
    table = column.table
    distinct = sorted(set(values))
    if connection.dialect.name == "postgresql":
        if not distinct:
            return []
        elements = func.json_array_elements_text(cast(bindparam("values", type_=Text), JSON)).table_valued("value")
        # Text as it is (a cast to varchar(n) would cut a longer value to a stored one's prefix).
        value = elements.c.value if isinstance(column.type, String) else cast(elements.c.value, column.type)
        listed = select(value)
        statement = select(table).where(column.in_(listed), *where)
        return list(connection.execute(statement, {"values": orjson.dumps(distinct).decode()}).all())
    rows: list[Row[Any]] = []
    for chunk in _chunks(distinct):
        rows += connection.execute(select(table).where(column.in_(chunk), *where)).all()
    return rows


def _identities_in(connection: Connection, column: Any, values: Iterable[Any], sources: set[str]) -> list[Row[Any]]:
    """Source identities of `sources` whose `column` is one of `values`.

    The source is told apart here, not in SQL: given `source IN (…)` too, SQLite's planner read
    every identity of those sources through the (source, source_key) index for each chunk of
    the list, where the column's own index finds the few it names — quadratic in a first load
    (7 s of the person master's 31 at the university profile)."""
    return [row for row in _select_in(connection, column, values) if row.source in sources]


def _merge_decisions(connection: Connection) -> dict[str, dict[str, Any]]:
    """Subjects a steward resolved by merging (their identities may join after all), with details."""
    rows = connection.execute(
        select(Conflict.subject, Conflict.details).where(
            Conflict.status == "resolved", Conflict.resolution.like("merge%")
        )
    )
    return {subject: details for subject, details in rows}


def _awaiting_merge(connection: Connection, merges: dict[str, dict[str, Any]]) -> list[Row[Any]]:
    """Records a steward decided to merge that are still unlinked.

    The decision is all a steward records; nothing about the records themselves changes, so
    without this they would wait for an unrelated edit at their source before joining.
    """
    keys: set[tuple[str, str]] = set()
    for subject, details in merges.items():
        if subject.startswith("card:"):
            keys.add(("card", details["card_no"]))
        elif subject.startswith("id:"):
            keys.update((record["source"], record["key"]) for record in details["records"])
    rows = _select_in(
        connection,
        SourceIdentity.source_key,
        {key for _, key in keys},
        SourceIdentity.source.in_({source for source, _ in keys}),
        SourceIdentity.person_id.is_(None),
    )
    return [row for row in rows if (row.source, row.source_key) in keys]


def _open_conflict(
    connection: Connection, kind: str, subject: str, details: dict[str, Any], result: ResolveResult
) -> None:
    statement = upsert(connection, Conflict.__table__).values(
        kind=kind, subject=subject, details=details, status="open", opened_at=utcnow()
    )
    # Count the rows RETURNING gives back: after ON CONFLICT DO NOTHING, psycopg reports rowcount -1.
    statement = statement.on_conflict_do_nothing(index_elements=["kind", "subject"]).returning(Conflict.id)
    result.conflicts_opened += len(connection.execute(statement).all())


def resolve(connection: Connection) -> ResolveResult:
    result = ResolveResult()
    pending = list(connection.execute(select(SourceIdentity).where(SourceIdentity.resolved.is_(False))).all())
    result.identities = len(pending)
    merges = _merge_decisions(connection)
    queued = {row.id for row in pending}
    pending += [row for row in _awaiting_merge(connection, merges) if row.id not in queued]
    if not pending:
        return result
    people = [row for row in pending if row.source in PEOPLE_SOURCES]
    cards = [row for row in pending if row.source == "card"]

    # -- 1. academic and HR rows, grouped by ID number --------------------------------------
    hashes = {row.id_number_hash for row in people if row.id_number_hash}
    group_rows = _identities_in(connection, SourceIdentity.id_number_hash, hashes, PEOPLE_SOURCES)
    groups: dict[str, list[Row[Any]]] = defaultdict(list)
    for row in group_rows:
        groups[row.id_number_hash].append(row)
    persons_by_hash = {p.id_number_hash: p.id for p in _select_in(connection, Person.id_number_hash, hashes)}

    joins: dict[int, str | None] = {}  # source_identity id -> the ID number (hash) whose person it joins
    # Whose name the others must agree with: the source the survivorship rules trust for names.
    name_rank = {source: n for n, source in enumerate(rules()["person"]["name"].sources)}
    for digest, members in groups.items():
        members.sort(key=lambda r: (name_rank.get(r.source, len(name_rank)), r.source_key))  # the authoritative first
        anchor = members[0]
        subject = f"id:{digest[:16]}"
        agreeing = [m for m in members if m.name == anchor.name]
        disagreeing = [m for m in members if m.name != anchor.name]
        if disagreeing and subject not in merges:
            _open_conflict(
                connection,
                "same_id_different_name",
                subject,
                {
                    "records": [{"source": m.source, "key": m.source_key, "name": m.name} for m in members],
                    "why": "the same ID number carries different names; not merged",
                },
                result,
            )
            for member in disagreeing:
                joins[member.id] = None
            members = agreeing
        for member in members:
            joins[member.id] = digest
    new_digests = sorted({digest for digest in joins.values() if digest} - persons_by_hash.keys())
    persons_by_hash.update(zip(new_digests, _create_persons(connection, new_digests, result), strict=True))
    links: dict[int, int | None] = {iid: persons_by_hash[d] if d else None for iid, d in joins.items()}
    # Rows without a usable ID number cannot match anyone: each is a person of its own.
    loners = [row for row in people if not row.id_number_hash]
    new_loners = [row for row in loners if row.person_id is None]
    created = iter(_create_persons(connection, [None] * len(new_loners), result))
    for row in loners:
        links[row.id] = row.person_id or next(created)

    # People first: the cards below read their holders' links, and the names of their persons.
    _apply_links(connection, links, result)

    # -- 2. cards, through their holder's 学号 / 工号 ----------------------------------------
    # A card follows its holder: one whose holder was just (re)linked is looked at again too,
    # though the card itself did not change (a steward's merge, a holder who arrived late).
    holder_links = {f"{_HOLDER_KIND[row.source]}:{row.source_key}" for row in [*group_rows, *people]}
    queued = {card.id for card in cards}
    cards += [
        card
        for card in _identities_in(connection, SourceIdentity.link, holder_links, {"card"})
        if card.id not in queued
    ]
    holder_keys = {card.link.split(":", 1)[1] for card in cards if card.link}
    holders = {
        (_HOLDER_KIND[h.source], h.source_key): h
        # (source, source_key) is one index: here the source belongs in SQL
        for h in _select_in(
            connection, SourceIdentity.source_key, holder_keys, SourceIdentity.source.in_(PEOPLE_SOURCES)
        )
    }
    # Every name the holder's person is known by: a dual-role holder's card may carry the name
    # academic affairs knows even when HR's differs (and a steward merged the two).
    names: dict[int, set[str]] = defaultdict(set)
    holder_persons = {h.person_id for h in holders.values() if h.person_id is not None}
    for member in _identities_in(connection, SourceIdentity.person_id, holder_persons, PEOPLE_SOURCES):
        names[member.person_id].add(member.name)
    card_links: dict[int, int | None] = {}
    for card in cards:
        kind, holder_no = card.link.split(":", 1)
        holder = holders.get((kind, holder_no))
        subject = f"card:{card.source_key}"
        if holder is None or holder.person_id is None:
            card_links[card.id] = None  # the holder is not (yet) linked; looked at again when it is
            continue
        if card.name not in names[holder.person_id] and subject not in merges:
            _open_conflict(
                connection,
                "card_name_mismatch",
                subject,
                {
                    "card_no": card.source_key,
                    "holder": f"{kind}:{holder_no}",
                    "name_on_card": card.name,
                    "holder_name": holder.name,
                    "why": "the card's name is not its holder's; one card, two people? not linked",
                },
                result,
            )
            card_links[card.id] = None
            continue
        card_links[card.id] = holder.person_id

    _apply_links(connection, card_links, result)
    _survive(connection, result)
    return result


def _create_persons(connection: Connection, digests: list[str | None], result: ResolveResult) -> list[int]:
    """New, still empty persons, one per ID number hash given; their ids in the same order.

    One batched INSERT … RETURNING: a round trip per person costs seconds on a first load.
    PostgreSQL: the ids drawn from the table's sequence in one statement, then the rows copied
    in — the batched INSERT is a statement of two thousand parameters per thousand persons,
    each parsed anew."""
    if not digests:
        return []
    result.persons_created += len(digests)
    if connection.dialect.name != "postgresql":
        inserted = insert(Person).returning(Person.id, sort_by_parameter_order=True)
        new_rows = [{"name": "", "id_number_hash": digest} for digest in digests]
        return list(connection.execute(inserted, new_rows).scalars())
    drawn = text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)")
    ids = list(connection.execute(drawn, {"table": Person.__tablename__, "count": len(digests)}).scalars())
    now = utcnow()
    rows = [
        {"id": person_id, "name": "", "id_number_hash": digest, "created_at": now, "updated_at": now}
        for person_id, digest in zip(ids, digests, strict=True)
    ]
    bulk_append(connection, Person.__table__, rows)
    return ids


def _apply_links(connection: Connection, links: dict[int, int | None], result: ResolveResult) -> None:
    identities = _select_in(connection, SourceIdentity.id, links)
    now = utcnow()
    role_updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for identity in identities:
        person_id = links[identity.id]
        if person_id is not None:
            result.linked += 1
            result.touched_persons.add(person_id)
        if identity.person_id is not None and identity.person_id != person_id:
            result.touched_persons.add(identity.person_id)  # it lost a member: recompute it
        _, key = ROLE_TABLES[identity.source]
        # Stamped as any write to a unified row is, so the next column checks look at it again.
        role_updates[identity.source].append({key: identity.source_key, "person_id": person_id, "loaded_at": now})
    bulk_update(
        connection,
        SourceIdentity.__table__,
        ("id",),
        [{"id": identity.id, "person_id": links[identity.id], "resolved": True} for identity in identities],
    )
    for source, rows in role_updates.items():
        table, key = ROLE_TABLES[source]
        bulk_update(connection, table, (key,), rows)


_HOLDER_KIND = {"academic": "student", "hr": "staff"}  # as a card's `link` names its holder


# Persons whose golden fields are worked out and written at a time: a first load touches every
# person, and their provenance rows (one per field) would otherwise all sit in memory at once.
SURVIVE_CHUNK = 5_000


def _survive(connection: Connection, result: ResolveResult) -> None:
    """Golden fields for every touched person, with provenance and the disagreements logged."""
    touched = sorted(result.touched_persons)
    for start in range(0, len(touched), SURVIVE_CHUNK):
        _survive_persons(connection, touched[start : start + SURVIVE_CHUNK], result)


def _survive_persons(connection: Connection, person_ids: list[int], result: ResolveResult) -> None:
    members_by_person: dict[int, list[Row[Any]]] = defaultdict(list)
    for member in _select_in(connection, SourceIdentity.person_id, person_ids):
        members_by_person[member.person_id].append(member)
    provenance: list[dict[str, Any]] = []
    person_updates: list[dict[str, Any]] = []
    now = utcnow()
    for person_id in person_ids:
        members = members_by_person.get(person_id, [])
        values: dict[str, Any] = {}
        for name in PERSON_FIELDS:
            column = "id_number_cipher" if name == "id_number" else name
            candidates = [Candidate(m.source, m.source_key, getattr(m, column), m.as_of) for m in members]
            winner, why = choose("person", name, candidates)
            values[column] = winner.value if winner else None
            if name == "id_number":  # the document comes with its number, from the same source
                values["id_type"] = _document_of(members, winner)
            if winner is None:
                continue
            provenance.append(
                {
                    "entity": "person",
                    "entity_id": person_id,
                    "field": name,
                    "source": winner.source,
                    "source_key": winner.source_key,
                    "as_of": winner.as_of,
                }
            )
            distinct = {c.value for c in candidates if c.value not in (None, "")}
            if name != "id_number" and len(distinct) > 1:
                _log_disagreement(connection, person_id, name, candidates, winner, why, result)
        if not members:
            values = {column: None for column in values} | {"name": ""}  # every member left: no facts
        person_updates.append({"id": person_id, **values, "updated_at": now})
    bulk_update(connection, Person.__table__, ("id",), person_updates)
    result.persons_updated += len(person_updates)
    bulk_upsert(connection, FieldProvenance.__table__, ("entity", "entity_id", "field"), provenance, update=True)


def _document_of(members: list[Row[Any]], number: Candidate | None) -> str | None:
    """The type of the document whose number won: the member's that sent it."""
    if number is None:
        return None
    return next(m.id_type for m in members if (m.source, m.source_key) == (number.source, number.source_key))


def _log_disagreement(
    connection: Connection,
    person_id: int,
    name: str,
    candidates: list[Candidate],
    winner: Candidate,
    why: str,
    result: ResolveResult,
) -> None:
    masked = name == "phone"
    details = {
        "field": name,
        "values": [
            {
                "source": c.source,
                "key": c.source_key,
                "value": (str(c.value)[:3] + "****" + str(c.value)[-4:]) if masked and c.value else _plain(c.value),
                "as_of": c.as_of.isoformat() if c.as_of else None,
            }
            for c in candidates
            if c.value not in (None, "")
        ],
        "winner": winner.source,
        "why": why,
    }
    subject = f"person:{person_id}:{name}"
    table = Conflict.__table__
    statement = upsert(connection, table).values(
        kind="field_disagreement",
        subject=subject,
        person_id=person_id,
        details=details,
        status="auto",
        resolution=why,
        opened_at=utcnow(),
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["kind", "subject"], set_={"details": details, "resolution": why}
        )
    )
    result.field_disagreements += 1


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value
