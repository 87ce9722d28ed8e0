"""The service hall and the steward desk in a real browser: headless Chromium driven by Playwright.

Against a running hub (the unified layer built from the stand-ins, the API with its pages in
development mode): a student prefills 在读证明, marks a value wrong, submits, downloads the PDF
and has its code verified (and a tampered one refused); the steward accepts the correction and
the student sees the outcome; an officer marks the work order ready and the student is
notified; the same at a phone's viewport; nobody reaches another person's work order by editing
a URL. Screenshots of the key pages go to `artifacts/screenshots/` (not committed).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, insert, select

from campushub.graphql.auth import Principal, mint_token
from campushub.models.quality import Outcome
from campushub.models.service import CheckResult, CorrectionRequest, RowCountAcceptance, WorkOrder, record_check_result
from campushub.models.unified import Course, Student
from campushub.simulators.server import SimulatorCluster
from tests.api_support import ApiHub, api_hub

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).parent.parent / "artifacts" / "screenshots"
VIEWPORTS = {"pc": {"width": 1280, "height": 860}, "phone": {"width": 375, "height": 740}}
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def hub(simulators: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHub]:
    with api_hub(simulators, "sqlite", tmp_path_factory.mktemp("browser"), development=True) as built:
        yield built


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    return request.param


def site(hub: ApiHub) -> str:
    return hub.url.removesuffix("/graphql")


def expect(locator):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def new_page(browser: object, viewport: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=VIEWPORTS[viewport], accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # A script typed into a field must never run: any dialog fails the test.
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    return page


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page, hub: ApiHub, role: str, path: str = "/hall") -> None:  # type: ignore[no-untyped-def]
    page.goto(site(hub) + path)
    page.get_by_test_id(f"signin-{role}").click()
    page.get_by_test_id("who").wait_for()


def by_id(page, testid: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id(testid)


def appears(page, testid: str) -> None:  # type: ignore[no-untyped-def]
    """Wait for an element; if it never comes, fail with what the page says went wrong."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        by_id(page, testid).wait_for()
    except PlaywrightTimeout:
        said = by_id(page, "error").inner_text() if by_id(page, "error").count() else ""
        pytest.fail(f"{testid} did not appear on {page.url}; the page says: {said!r}")


def submit_enrollment_certificate(page, hub: ApiHub, viewport: str, wrong_note: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Open 在读证明, confirm every value but the class, mark that wrong, submit: (id, code)."""
    by_id(page, "form-link-enrollment_certificate").click()
    by_id(page, "field-name").wait_for()
    assert "教务" in by_id(page, "source-name").inner_text()
    assert by_id(page, "display-name").inner_text().strip()
    shoot(page, f"{viewport}-form-prefilled")
    by_id(page, "confirm-all").click()
    by_id(page, "wrong-class").check()
    by_id(page, "note-class").fill(wrong_note)
    by_id(page, "value-class").fill("航海技术25-2班")
    by_id(page, "submit").click()
    by_id(page, "work-order-status").wait_for()
    code = by_id(page, "verification-code").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){3}", code), code
    work_order = re.search(r"#/work-order/([0-9a-f]+)", page.url)
    assert work_order, page.url
    shoot(page, f"{viewport}-work-order")
    return work_order.group(1), code


def test_student_submits_corrects_downloads_and_verifies(hub: ApiHub, browser: object, viewport: str) -> None:
    page = new_page(browser, viewport)
    sign_in(page, hub, "student")
    by_id(page, "catalog").wait_for()
    expect(by_id(page, "coverage-enrollment_certificate")).to_contain_text("%")
    shoot(page, f"{viewport}-catalog")
    script = f"<script>alert('x')</script> 我已转班 ({viewport})"
    _, code = submit_enrollment_certificate(page, hub, viewport, script)

    with page.expect_download() as download_info:
        by_id(page, "download-pdf").click()
    pdf = Path(download_info.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000

    with hub.engine.connect() as connection:
        correction = (
            connection.execute(select(CorrectionRequest.__table__).where(CorrectionRequest.note == script))
            .mappings()
            .one()
        )
    assert correction["field"] == "class" and correction["owner"] == "教务处"

    page.goto(f"{site(hub)}/verify?code={code}")
    by_id(page, "verify-valid").wait_for()
    expect(by_id(page, "verify-result")).to_contain_text("在读证明")
    shoot(page, f"{viewport}-verify-valid")
    tampered = code[:-1] + ("A" if code[-1] != "A" else "B")
    page.goto(f"{site(hub)}/verify?code={tampered}")
    by_id(page, "verify-invalid").wait_for()
    page.goto(f"{site(hub)}/verify?code=not-a-code")
    by_id(page, "verify-invalid").wait_for()
    expect(by_id(page, "verify-result")).to_contain_text("格式")


def test_steward_accepts_correction_and_student_sees_the_outcome(hub: ApiHub, browser: object, viewport: str) -> None:
    student = new_page(browser, viewport)
    sign_in(student, hub, "student")
    submit_enrollment_certificate(student, hub, viewport, f"班级有误 ({viewport})")
    with hub.engine.connect() as connection:
        correction_id = connection.execute(
            select(func.max(CorrectionRequest.id)).where(CorrectionRequest.note == f"班级有误 ({viewport})")
        ).scalar_one()

    steward = new_page(browser, viewport)
    sign_in(steward, hub, "steward", "/desk")
    by_id(steward, f"correction-{correction_id}").wait_for()
    # The note typed in the hall shows as text on the desk, never as markup.
    shoot(steward, f"{viewport}-desk-corrections")
    by_id(steward, f"correction-note-{correction_id}").fill("已核实，教务处将更新班级")
    by_id(steward, f"accept-{correction_id}").click()
    expect(by_id(steward, f"correction-status-{correction_id}")).to_contain_text("accepted")

    student.goto(site(hub) + "/hall#/my-orders")
    expect(by_id(student, f"correction-status-{correction_id}").first).to_contain_text("采纳")
    expect(by_id(student, f"correction-response-{correction_id}").first).to_contain_text("已核实")


def test_officer_marks_ready_and_student_is_notified(hub: ApiHub, browser: object, viewport: str) -> None:
    student = new_page(browser, viewport)
    sign_in(student, hub, "student")
    work_order, _ = submit_enrollment_certificate(student, hub, viewport, "班级信息过期")

    officer = new_page(browser, viewport)
    sign_in(officer, hub, "college_officer", "/desk")
    appears(officer, f"work-order-{work_order}")
    by_id(officer, f"ready-{work_order}").click()
    expect(by_id(officer, f"status-{work_order}")).to_contain_text("可领取")
    shoot(officer, f"{viewport}-desk-work-orders")

    student.goto(site(hub) + "/hall")
    expect(by_id(student, "notifications")).to_contain_text("可以领取")
    shoot(student, f"{viewport}-notified")
    with hub.engine.connect() as connection:
        status = connection.execute(select(WorkOrder.status).where(WorkOrder.public_id == work_order)).scalar_one()
    assert status == "ready"


def test_steward_accepts_a_shrunk_tables_size_next_to_its_failing_check(hub: ApiHub, browser: object) -> None:
    """A table that lost rows fails its row-count check run after run; the desk offers the
    steward, beside that check, to accept the size it has now (with why)."""
    with hub.engine.connect() as connection:
        live = connection.execute(
            select(func.count()).select_from(Course).where(Course.deleted_at.is_(None))
        ).scalar_one()
    # The verdict the desk shows: the table as it is, a fifth below its baseline.
    shrunk = Outcome(
        passed=False, counts={"row_count": live, "baseline_row_count": live * 5 // 4}, details={"drop": 0.2}
    )
    unnamed = Outcome(passed=False, counts={"failing": 1})  # a grade naming no student: a warning
    replaced = [("courses", "row_count"), ("grades", "source_keys")]
    with hub.engine.begin() as connection:
        kept = [
            dict(row)
            for entity, name in replaced
            for row in connection.execute(
                select(CheckResult.__table__).where(CheckResult.entity == entity, CheckResult.check_name == name)
            ).mappings()
        ]
        record_check_result(connection, "courses", "row_count", shrunk, "browser-test")
        record_check_result(connection, "grades", "source_keys", unnamed, "browser-test", blocking=False)
    try:
        steward = new_page(browser, "pc")
        sign_in(steward, hub, "steward", "/desk")
        appears(steward, "accept-row-count-courses")
        # The warning is told apart from the failure that blocks, and offers no acceptance.
        expect(by_id(steward, "warning-grades-source_keys")).to_contain_text("Warning")
        expect(by_id(steward, "checks-summary")).to_contain_text("1 failing, 1 warning")
        shoot(steward, "pc-desk-row-count")
        by_id(steward, "row-count-reason-courses").fill("停开课程已从课程库移除")
        by_id(steward, "accept-row-count-courses").click()
        appears(steward, "accept-row-count-courses-done")
        with hub.engine.connect() as connection:
            accepted = connection.execute(
                select(RowCountAcceptance.entity, RowCountAcceptance.reason, RowCountAcceptance.accepted_by)
            ).all()
        assert [(row.entity, row.reason) for row in accepted] == [("courses", "停开课程已从课程库移除")]
    finally:
        with hub.engine.begin() as connection:  # the module's other tests see the hub as built
            connection.execute(delete(CheckResult).where(CheckResult.run_id == "browser-test"))
            for row in kept:
                connection.execute(insert(CheckResult).values(**row))
            connection.execute(delete(RowCountAcceptance))


def test_nobody_reaches_another_persons_work_order(hub: ApiHub, browser: object) -> None:
    owner = new_page(browser, "pc")
    sign_in(owner, hub, "student")
    work_order, _ = submit_enrollment_certificate(owner, hub, "pc", "另一个学生不应看到")

    with hub.engine.connect() as connection:
        other = connection.execute(
            select(Student.student_no).where(Student.student_no != hub.users["student"].subject).limit(1)
        ).scalar_one()
    token = mint_token(Principal(subject=other, role="student"))
    intruder = new_page(browser, "pc")
    intruder.goto(site(hub) + "/hall")
    intruder.evaluate("token => sessionStorage.setItem('campushub.token', token)", token)
    intruder.goto(f"{site(hub)}/hall#/work-order/{work_order}")
    intruder.reload()
    by_id(intruder, "error").wait_for()
    assert "另一个学生不应看到" not in intruder.content()
    # Nor through the PDF's URL, nor the API directly.
    pdf = httpx.get(f"{site(hub)}/api/work-orders/{work_order}/pdf", headers={"Authorization": f"Bearer {token}"})
    assert pdf.status_code == 404 and b"%PDF" not in pdf.content


def test_bad_input_gets_a_clear_message_and_leaves_nothing(hub: ApiHub, browser: object) -> None:
    page = new_page(browser, "pc")
    sign_in(page, hub, "student")
    with hub.engine.connect() as connection:
        before = connection.execute(select(func.count()).select_from(WorkOrder)).scalar_one()
    by_id(page, "form-link-enrollment_certificate").click()
    by_id(page, "field-name").wait_for()
    by_id(page, "confirm-all").click()
    by_id(page, "wrong-class").check()
    by_id(page, "value-class").fill("某班")
    by_id(page, "submit").click()  # no note
    by_id(page, "error").wait_for()
    by_id(page, "note-class").fill("长" * 501)
    by_id(page, "submit").click()
    by_id(page, "error").wait_for()
    with hub.engine.connect() as connection:
        after = connection.execute(select(func.count()).select_from(WorkOrder)).scalar_one()
    assert after == before

    forged = new_page(browser, "pc")
    forged.goto(site(hub) + "/hall")
    forged.evaluate("() => sessionStorage.setItem('campushub.token', 'forged.token.value')")
    forged.reload()
    by_id(forged, "signin").wait_for()
    expect(by_id(forged, "error")).to_contain_text("重新登录")
