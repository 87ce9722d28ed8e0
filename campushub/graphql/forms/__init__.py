"""The service hall's form catalog: one YAML file per form, beside this module.

A form declares who may use it (`roles`), whose data it is about (`subject`: student, staff or
cardholder — always the signed-in person) and its fields, each mapped to a path into the unified
layer (`campushub.graphql.prefill.PATHS`) or to `null` when only the applicant can answer. What
a form does not declare, prefill cannot release: purpose limitation by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

import yaml

Subject = Literal["student", "staff", "cardholder"]


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    label: str
    label_en: str
    path: str | None  # None: typed by the applicant
    reason: str | None = None  # why a path-less field is not prefilled
    full_id_number: bool = False  # the form prints the whole ID number (else it is masked)


@dataclass(frozen=True, slots=True)
class Form:
    id: str
    title: str
    title_en: str
    subject: Subject
    roles: frozenset[str]
    fields: tuple[FormField, ...]

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(field.path for field in self.fields if field.path)


def _form(spec: dict) -> Form:
    fields = tuple(FormField(**field) for field in spec["fields"])
    names = [field.name for field in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"form {spec['id']!r} declares a field twice")
    if spec["subject"] not in ("student", "staff", "cardholder"):
        raise ValueError(f"form {spec['id']!r}: unknown subject {spec['subject']!r}")
    return Form(
        id=spec["id"],
        title=spec["title"],
        title_en=spec["title_en"],
        subject=spec["subject"],
        roles=frozenset(spec["roles"]),
        fields=fields,
    )


@cache
def catalog() -> dict[str, Form]:
    forms = [
        _form(yaml.safe_load(entry.read_text(encoding="utf-8")))
        for entry in sorted(files(__name__).iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".yaml")
    ]
    return {form.id: form for form in forms}
