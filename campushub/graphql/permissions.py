"""Role permissions, read from `permissions.yaml` (the one place they are declared)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

import yaml

from campushub.models.sources import LABELS

Scope = Literal["all", "own_college"]
SELF_ENTITIES = frozenset({"person", "student", "staff", "grades", "fees", "card"})
ALL_SOURCES = "all"


@dataclass(frozen=True, slots=True)
class Grant:
    """Department access to one entity."""

    scope: Scope
    fields: frozenset[str]
    masked: frozenset[str]


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    label: str
    scoped: bool
    self_entities: frozenset[str]
    grants: dict[str, Grant]
    steward: bool
    process_forms: frozenset[str]
    # The source systems whose correction requests this role decides (`ALL_SOURCES`: every one,
    # the hub's own values included).
    decides_corrections: frozenset[str]

    def grant(self, entity: str) -> Grant | None:
        return self.grants.get(entity)


def _role(name: str, spec: dict) -> Role:
    unknown_self = set(spec.get("self", ())) - SELF_ENTITIES
    if unknown_self:
        raise ValueError(f"permissions.yaml: role {name!r} names unknown self entities {sorted(unknown_self)}")
    grants = {
        entity: Grant(
            scope=grant["scope"],
            fields=frozenset(grant["fields"]),
            masked=frozenset(grant.get("masked", ())),
        )
        for entity, grant in (spec.get("grants") or {}).items()
    }
    for entity, grant in grants.items():
        if grant.scope not in ("all", "own_college"):
            raise ValueError(f"permissions.yaml: role {name!r}, {entity}: unknown scope {grant.scope!r}")
        if not grant.masked <= grant.fields:
            raise ValueError(f"permissions.yaml: role {name!r}, {entity}: masks fields it does not grant")
    corrections = spec.get("corrections", ())
    if corrections != ALL_SOURCES:
        unknown = set(corrections) - set(LABELS)
        if unknown:
            raise ValueError(
                f"permissions.yaml: role {name!r} decides corrections of unknown sources {sorted(unknown)}"
            )
    return Role(
        name=name,
        label=spec["label"],
        scoped=bool(spec.get("scoped", False)),
        self_entities=frozenset(spec.get("self", ())),
        grants=grants,
        steward=bool(spec.get("steward", False)),
        process_forms=frozenset(spec.get("process_forms", ())),
        decides_corrections=frozenset({ALL_SOURCES} if corrections == ALL_SOURCES else corrections),
    )


def load_roles() -> dict[str, Role]:
    spec = yaml.safe_load(files("campushub.graphql").joinpath("permissions.yaml").read_text(encoding="utf-8"))
    return {name: _role(name, role) for name, role in spec["roles"].items()}


ROLES: dict[str, Role] = load_roles()
