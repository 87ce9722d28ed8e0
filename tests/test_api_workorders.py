"""Work orders, correction requests and verification through the API.

A submitted form keeps what the server served (never what the page claims), a value marked
wrong reaches the department that owns its source system and nobody else's, only the
processing officers move a work order on, and a verification code stops verifying the moment
its snapshot is altered.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import delete, select, update

from campushub.models.service import AuditEntry, CorrectionRequest, Notification, WorkOrder
from tests.api_support import Api, ApiHub

PREFILL = '{ prefill(formId: "enrollment_certificate") { fields { name value quality } } }'
SUBMIT = """mutation($answers: [AnswerInput!]!) {
  submitWorkOrder(formId: "enrollment_certificate", answers: $answers) {
    id status verificationCode fields { name value display sourceLabel confirmed selfDeclared note }
  }
}"""


def answers(student: Api, wrong: dict[str, str] | None = None, claimed: str = "不对") -> list[dict[str, Any]]:
    """Confirm every field but those in `wrong` (field -> note). The page's values are sent back
    altered on purpose: the server must ignore them for confirmed fields."""
    fields = student.query(PREFILL)["data"]["prefill"]["fields"]
    wrong = wrong or {}
    return [
        {"name": f["name"], "confirmed": False, "value": claimed, "note": wrong[f["name"]]}
        if f["name"] in wrong
        else {"name": f["name"], "confirmed": True, "value": "tampered by the page"}
        for f in fields
    ]


def visible_corrections(hub: ApiHub, role: str) -> list[str] | None:
    """The open correction requests a role sees, or None when it may not look."""
    answer = hub.as_role(role).query("{ corrections(first: 100) { nodes { id } } }")
    if answer.get("data") is None:
        return None
    return [node["id"] for node in answer["data"]["corrections"]["nodes"]]


def submit(student: Api, wrong: dict[str, str] | None = None) -> dict[str, Any]:
    answer = student.query(SUBMIT, {"answers": answers(student, wrong)})
    assert "errors" not in answer, answer
    return answer["data"]["submitWorkOrder"]


def test_a_work_order_keeps_what_was_served_and_routes_corrections_to_the_owner(hub_api: ApiHub) -> None:
    student = hub_api.as_role("student")
    served = {f["name"]: f["value"] for f in student.query(PREFILL)["data"]["prefill"]["fields"]}
    order = submit(student, {"major": "我已转专业"})
    fields = {f["name"]: f for f in order["fields"]}
    assert fields["name"]["value"] == served["name"] and fields["name"]["confirmed"]
    assert fields["major"]["selfDeclared"] and fields["major"]["sourceLabel"] == "本人申报"
    assert "*" in fields["id_number"]["value"]  # sealed in the snapshot, masked when shown

    with hub_api.engine.connect() as connection:
        correction = (
            connection.execute(select(CorrectionRequest.__table__).where(CorrectionRequest.note == "我已转专业"))
            .mappings()
            .one()
        )
    assert correction["owner"] == "教务处" and correction["source"] == "academic"
    seen_by = {
        role: visible_corrections(hub_api, role)
        for role in ("academic_officer", "finance_officer", "steward", "student")
    }
    assert str(correction["id"]) in seen_by["academic_officer"]
    assert str(correction["id"]) in seen_by["steward"]
    assert seen_by["finance_officer"] is None or str(correction["id"]) not in seen_by["finance_officer"]
    assert seen_by["student"] is None

    decide = 'mutation($id: ID!) { decideCorrection(id: $id, accept: true, note: "已更正") { status } }'
    refused = hub_api.as_role("finance_officer").query(decide, {"id": str(correction["id"])})
    assert refused["data"] is None or refused["data"]["decideCorrection"] is None
    accepted = hub_api.as_role("academic_officer").query(decide, {"id": str(correction["id"])})
    assert accepted["data"]["decideCorrection"]["status"] == "accepted"
    mine = student.query("{ me { corrections { id status responseNote } notifications { message } } }")["data"]["me"]
    assert any(c["id"] == str(correction["id"]) and c["status"] == "accepted" for c in mine["corrections"])
    assert any("已采纳" in n["message"] for n in mine["notifications"])
    with hub_api.engine.begin() as connection:
        connection.execute(delete(Notification).where(Notification.message.contains("已更正")))


def test_only_processing_officers_move_a_work_order_on(hub_api: ApiHub) -> None:
    order = submit(hub_api.as_role("student"))
    move = "mutation($id: ID!, $s: String!) { setWorkOrderStatus(id: $id, status: $s) { status } }"
    for role in ("student", "librarian", "finance_officer"):
        answer = hub_api.as_role(role).query(move, {"id": order["id"], "s": "ready"})
        assert answer["errors"][0]["extensions"]["code"] == "FORBIDDEN", role
    officer = hub_api.as_role("college_officer")
    assert (
        officer.query(move, {"id": order["id"], "s": "processing"})["data"]["setWorkOrderStatus"]["status"]
        == "processing"
    )
    backwards = officer.query(move, {"id": order["id"], "s": "submitted"})
    assert backwards["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert officer.query(move, {"id": order["id"], "s": "ready"})["data"]["setWorkOrderStatus"]["status"] == "ready"


def test_a_verification_code_fails_once_its_snapshot_is_altered(hub_api: ApiHub) -> None:
    order = submit(hub_api.as_role("student"))
    verify = hub_api.url.removesuffix("/graphql") + "/api/verify"
    good = httpx.get(verify, params={"code": order["verificationCode"]})
    assert good.status_code == 200 and good.json()["valid"] is True
    assert httpx.get(verify, params={"code": "ABCD"}).status_code == 400
    with hub_api.engine.begin() as connection:
        row = connection.execute(select(WorkOrder.snapshot).where(WorkOrder.public_id == order["id"])).scalar_one()
        forged = {**row, "fields": [{**row["fields"][0], "display": "另一个名字"}, *row["fields"][1:]]}
        connection.execute(update(WorkOrder).where(WorkOrder.public_id == order["id"]).values(snapshot=forged))
    tampered = httpx.get(verify, params={"code": order["verificationCode"]})
    assert tampered.status_code == 404 and tampered.json()["valid"] is False


def test_bad_answers_are_refused_and_leave_no_work_order(hub_api: ApiHub) -> None:
    student = hub_api.as_role("student")
    with hub_api.engine.connect() as connection:
        before = connection.execute(select(WorkOrder.id)).all()
    good = answers(student)
    cases = {
        "a field left out": good[1:],
        "a field answered twice": [*good, good[0]],
        "a field the form lacks": [*good, {"name": "salary", "confirmed": True}],
        "wrong without a note": answers(student, {"class": ""}),
        "a note over 500 characters": answers(student, {"class": "长" * 501}),
    }
    for case, given in cases.items():
        answer = student.query(SUBMIT, {"answers": given})
        assert answer["data"] is None or answer["data"]["submitWorkOrder"] is None, case
        assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", case
    with hub_api.engine.connect() as connection:
        assert connection.execute(select(WorkOrder.id)).all() == before


def test_a_correction_keeps_the_held_id_number_masked_even_from_a_form_that_shows_it_in_full(
    hub_api: ApiHub,
) -> None:
    student = hub_api.as_role("student")
    served = {f["name"]: f["value"] for f in student.query(PREFILL)["data"]["prefill"]["fields"]}
    assert "*" not in served["id_number"]  # the enrollment certificate declares the full number
    order = submit(student, {"id_number": "号码有误"})
    with hub_api.engine.connect() as connection:
        correction = (
            connection.execute(
                select(CorrectionRequest.__table__)
                .where(CorrectionRequest.work_order_id.is_not(None))
                .where(CorrectionRequest.note == "号码有误")
            )
            .mappings()
            .one()
        )
    held = correction["current_value"]
    assert held != served["id_number"] and held[:3] == served["id_number"][:3] and held[-4:] == served["id_number"][-4:]
    assert "*" in held
    # As the deciding department reads it.
    answer = hub_api.as_role("steward").query("{ corrections(first: 100) { nodes { id currentValue } } }")
    shown = {node["id"]: node["currentValue"] for node in answer["data"]["corrections"]["nodes"]}
    assert shown[str(correction["id"])] == held
    assert order["id"]


def test_listing_work_orders_audits_every_field_it_releases(hub_api: ApiHub) -> None:
    order = submit(hub_api.as_role("student"))
    officer = hub_api.as_role("college_officer")
    answer = officer.query("{ workOrders(first: 100) { nodes { id fields { name } } } }")
    listed = {node["id"]: [f["name"] for f in node["fields"]] for node in answer["data"]["workOrders"]["nodes"]}
    assert order["id"] in listed
    with hub_api.engine.connect() as connection:
        rows = connection.execute(
            select(AuditEntry.fields).where(AuditEntry.actor_role == "college_officer", AuditEntry.purpose == "process")
        ).scalars()
        audited = [fields for fields in rows]
    assert listed[order["id"]] in audited  # the fields by name, as released


def test_the_public_verification_page_masks_the_name_as_it_masks_the_requester(hub_api: ApiHub) -> None:
    order = submit(hub_api.as_role("student"))
    verify = hub_api.url.removesuffix("/graphql") + "/api/verify"
    found = httpx.get(verify, params={"code": order["verificationCode"]}).json()
    name = next(f["display"] for f in order["fields"] if f["name"] == "name")
    shown = {field["label"]: field["display"] for field in found["fields"]}
    assert name not in shown.values()
    assert found["requesterName"] in shown.values() and found["requesterName"].startswith(name[0])
    # A name the person marked wrong and typed anew: masked too.
    student = hub_api.as_role("student")
    corrected = student.query(SUBMIT, {"answers": answers(student, {"name": "名字有误"}, claimed="王大明")})
    code = corrected["data"]["submitWorkOrder"]["verificationCode"]
    shown = [field["display"] for field in httpx.get(verify, params={"code": code}).json()["fields"]]
    assert "王大明" not in shown and "王**" in shown


def test_a_typed_id_number_is_sealed_in_full_only_where_the_form_needs_the_full_number() -> None:
    from campushub.graphql.forms import catalog
    from campushub.graphql.prefill import Missing
    from campushub.graphql.workorders import _snapshot_field

    typed = "440102199001011234"
    for form_id, sealed in (("card_replacement", False), ("enrollment_certificate", True)):
        form_field = next(f for f in catalog()[form_id].fields if f.path == "person.id_number")
        answer = {"name": form_field.name, "confirmed": False, "value": typed, "note": None}
        field, corrected = _snapshot_field(form_field, Missing("no source system holds an ID number"), answer)
        assert not corrected
        assert typed not in (field["value"], field["display"]), form_id
        assert ("sealed" in field) is sealed, form_id


def test_a_mutation_that_fails_half_way_answers_and_releases_nothing(hub_api: ApiHub) -> None:
    student = hub_api.as_role("student")
    given = answers(student)
    both = """mutation Both($answers: [AnswerInput!]!) {
      done: submitWorkOrder(formId: "enrollment_certificate", answers: $answers) { id verificationCode }
      refused: submitWorkOrder(formId: "staff_income_certificate", answers: $answers) { id }
    }"""
    with hub_api.engine.connect() as connection:
        before = connection.execute(select(WorkOrder.id)).all()
    response = student.post(both, {"answers": given})
    answer = response.json()
    assert answer["data"] is None  # no id of a work order that was rolled back
    assert [(error["path"], error["extensions"]["code"]) for error in answer["errors"]] == [(["refused"], "FORBIDDEN")]
    with hub_api.engine.connect() as connection:
        assert connection.execute(select(WorkOrder.id)).all() == before
        audited = connection.execute(
            select(AuditEntry.entity, AuditEntry.outcome).where(
                AuditEntry.request_id == response.headers["X-Request-ID"]
            )
        ).all()
    assert audited == [("form", "denied")]  # the refusal on record; no read of what was withheld


def test_who_decides_corrections_is_read_from_the_permissions_not_from_an_org_units_name(hub_api: ApiHub) -> None:
    import dataclasses

    from campushub.graphql.permissions import ALL_SOURCES, ROLES
    from campushub.models.sources import OWNERS
    from campushub.models.unified import OrgUnit

    deciders = {name: role.decides_corrections for name, role in ROLES.items() if role.decides_corrections}
    assert deciders == {
        "academic_officer": {"academic"},
        "card_officer": {"card"},
        "finance_officer": {"finance"},
        "hr_officer": {"hr"},
        "steward": {ALL_SOURCES},
    }
    for role in ROLES:
        answer = hub_api.as_role(role).query("{ corrections(first: 5) { nodes { id source } } }")
        allowed = answer.get("data") is not None and answer["data"]["corrections"] is not None
        assert allowed == (role in deciders), role
        if allowed and ALL_SOURCES not in deciders[role]:
            assert {node["source"] for node in answer["data"]["corrections"]["nodes"]} <= deciders[role]
    # A librarian acting for the office that owns academic records decides none of them.
    with hub_api.engine.connect() as connection:
        academic_office = connection.execute(select(OrgUnit.code).where(OrgUnit.name == OWNERS["academic"])).scalar()
    assert academic_office is not None
    librarian = dataclasses.replace(hub_api.users["librarian"], org_unit=academic_office)
    answer = hub_api.as_principal(librarian).query("{ corrections(first: 5) { nodes { id } } }")
    assert answer["errors"][0]["extensions"]["code"] == "FORBIDDEN"
