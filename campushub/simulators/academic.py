"""教务 — the academic affairs system as it is typically exposed: JSON REST, data-standard
pinyin field names (XH 学号, XM 姓名, ...), page-number pagination, an `updated_since` filter,
an API key in the `X-API-Key` header, and a `{"code", "msg", "data"}` envelope."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import Response

from campushub.simulators import catalog
from campushub.simulators.faults import FaultSettings
from campushub.simulators.malformed import Corruptible, maybe_corrupt, repeats_previous_page
from campushub.simulators.service import Selection, Without, json_response, page_slice, service_app
from campushub.simulators.settings import SimulatorSettings
from campushub.simulators.world import CST, Grade, Student, World

SCHOOL_CODE = "10566"  # 广东海洋大学's national institution code
MAX_PAGE_SIZE = 1000

CORRUPTIBLE = {
    "students": Corruptible(
        key="XH", id_number="SFZJH", id_type="SFZJLXM", date=("CSRQ", "2005-02-30"), code=("XBM", "7")
    ),
    "grades": Corruptible(key="XH", date=("GXSJ", "2025-13-01T09:00:00+08:00"), code=("KCXZ", "未知")),
}


def student_json(student: Student) -> dict[str, Any]:
    person = student.person
    return {
        "XH": student.student_no,
        "XM": person.name,
        "XBM": person.sex,
        "CSRQ": person.birth.isoformat(),
        "SFZJLXM": person.id_type,
        "SFZJH": person.id_number,
        "MZM": person.ethnicity,
        "ZZMMM": person.political_status,
        "YXDM": student.college,
        "ZYDM": student.major,
        "BJDM": student.class_code,
        "RXNY": f"{student.entry_year}09",
        "PYCCM": student.level,
        "XJZTM": student.status,
        "SJHM": student.phone,
        "DZYX": f"{student.student_no}@stu.{catalog.EMAIL_DOMAIN}",
        "GXSJ": student.updated_at.isoformat(timespec="milliseconds"),
    }


def grade_json(grade: Grade) -> dict[str, Any]:
    return {
        "XH": grade.student_no,
        "KCDM": grade.course_code,
        "KCMC": grade.course_name,
        "XNXQ": grade.term,
        "XF": f"{grade.credits:.1f}",
        "CJ": grade.text_grade or str(grade.score),
        "KCXZ": "必修" if grade.compulsory else "选修",
        "KSXZ": "正常考试" if grade.score >= 60 else "补考",
        "GXSJ": grade.updated_at.isoformat(timespec="milliseconds"),
    }


PageNo = Annotated[int, Query(ge=1, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Since = Annotated[dt.datetime | None, Query(description="only records updated after this instant (ISO 8601)")]
Until = Annotated[
    dt.datetime | None,
    Query(description="only changes up to this instant: pass the first page's serverTime to page a stable set"),
]


class _Unauthorized(Exception):
    pass


def create_app(world: World, settings: SimulatorSettings, faults: FaultSettings, fault_seed: int = 0) -> FastAPI:
    app = service_app(
        "教务系统 Academic affairs (stand-in)",
        "Students, colleges, majors, classes, courses and grades. Authenticate with `X-API-Key`.",
        world,
        faults,
        fault_seed,
    )
    selection = Selection(world)

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), settings.academic_api_key.encode()):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    def unauthorized(request: object, exc: _Unauthorized) -> Response:
        return json_response({"code": 40101, "msg": "API key 无效或缺失", "data": None}, 401)

    def envelope(rows: list[dict[str, Any]], total: int, page: int, size: int, server_time: dt.datetime) -> Response:
        data = {
            "list": rows,
            "total": total,
            "pageNo": page,
            "pageSize": size,
            "serverTime": server_time.isoformat(timespec="milliseconds"),
        }
        return json_response({"code": 0, "msg": "success", "data": data})

    def paged(
        stream: str,
        count: int,
        render: Callable[[list[int]], list[dict[str, Any]]],
        page: int,
        size: int,
        since: dt.datetime | None,
        until: dt.datetime | None,
        updated_at: Callable[[int], dt.datetime],
        removed: Callable[[], list[int]],
    ) -> Response:
        now = dt.datetime.now(CST)
        # Served with millisecond precision: select with exactly the instant the client sees.
        server_time = until or now.replace(microsecond=now.microsecond // 1000 * 1000)
        chosen = selection.select(stream, count, since, server_time, updated_at)
        # Deletions are not pinned to `until`: one applied mid-pull shifts the later pages by a
        # record, as it would on any offset-paged API.
        gone = removed()
        if gone:
            chosen = Without(chosen, gone)
        repeat = repeats_previous_page(world.seed, stream, page, faults.malformed_rate)
        indices = page_slice(chosen, page, size, repeat)
        return envelope(render(indices), len(chosen), page, size, server_time)

    auth = [Depends(require_key)]

    def corrupted(stream: str, index: int, row: dict[str, Any]) -> dict[str, Any]:
        return maybe_corrupt(row, world.seed, stream, index, faults.malformed_rate, CORRUPTIBLE[stream])

    def deleted_students() -> list[int]:
        with world.changes.lock:  # a copy: a deletion applied meanwhile must not shift this page
            return list(world.changes.deleted_students)

    def deleted_grades() -> list[int]:
        # A deleted student's grades went with it: consecutive in the stream, ascending.
        return [n for index in deleted_students() for n in world.grade_indices_of(index)]

    @app.get("/api/v1/students", dependencies=auth, summary="学生基本信息 students")
    def students(
        pageNo: PageNo = 1, pageSize: PageSize = 100, updated_since: Since = None, updated_until: Until = None
    ) -> Response:
        def render(indices: list[int]) -> list[dict[str, Any]]:
            return [corrupted("students", i, student_json(world.student(i))) for i in indices]

        return paged(
            "students",
            world.student_count,
            render,
            pageNo,
            pageSize,
            updated_since,
            updated_until,
            lambda i: world.student(i).updated_at,
            deleted_students,
        )

    @app.get("/api/v1/grades", dependencies=auth, summary="成绩 grades")
    def grades(
        pageNo: PageNo = 1, pageSize: PageSize = 100, updated_since: Since = None, updated_until: Until = None
    ) -> Response:
        def render(indices: list[int]) -> list[dict[str, Any]]:
            rows = []
            by_student: dict[int, list[Grade]] = {}  # a page mostly covers a few students
            for n in indices:
                student, slot = world.locate_grade(n)
                if student not in by_student:
                    by_student[student] = world.grades_of(student)
                rows.append(corrupted("grades", n, grade_json(by_student[student][slot])))
            return rows

        def grade_updated_at(n: int) -> dt.datetime:
            student, slot = world.locate_grade(n)
            return world.grades_of(student, slot, slot + 1)[0].updated_at  # rare: filters older than the snapshot

        return paged(
            "grades",
            world.grade_count,
            render,
            pageNo,
            pageSize,
            updated_since,
            updated_until,
            grade_updated_at,
            deleted_grades,
        )

    def reference(rows: list[dict[str, Any]], page: int, size: int) -> Response:
        start = (page - 1) * size
        return envelope(rows[start : start + size], len(rows), page, size, dt.datetime.now(CST))

    @app.get("/api/v1/colleges", dependencies=auth, summary="院系 colleges")
    def colleges(pageNo: PageNo = 1, pageSize: PageSize = 100) -> Response:
        rows = [
            {"YXDM": code, "YXMC": name, "LSDWDM": SCHOOL_CODE, "DWLBM": "学院"} for code, name, _ in catalog.COLLEGES
        ]
        return reference(rows, pageNo, pageSize)

    @app.get("/api/v1/majors", dependencies=auth, summary="专业 majors")
    def majors(pageNo: PageNo = 1, pageSize: PageSize = 100) -> Response:
        rows = [
            {"ZYDM": major, "ZYMC": name, "YXDM": college, "XZ": "4", "PYCCM": "20"}
            for college, _, majors in catalog.COLLEGES
            for major, name in majors
        ]
        return reference(rows, pageNo, pageSize)

    @app.get("/api/v1/classes", dependencies=auth, summary="班级 classes")
    def classes(pageNo: PageNo = 1, pageSize: PageSize = 100) -> Response:
        college_of = {major: college for college, _, majors in catalog.COLLEGES for major, _ in majors}
        rows = [
            {"BJDM": code, "BJMC": name, "ZYDM": major, "YXDM": college_of[major], "NJ": str(year)}
            for code, name, major, year, _ in world.classes()
        ]
        return reference(rows, pageNo, pageSize)

    @app.get("/api/v1/courses", dependencies=auth, summary="课程 courses")
    def courses(pageNo: PageNo = 1, pageSize: PageSize = 100) -> Response:
        rows = [
            {
                "KCDM": code,
                "KCMC": name,
                "XF": f"{credits:.1f}",
                "KKYXDM": college,
                "KCLB": "专业课" if college else "通识课",
            }
            for code, name, credits, college in world.courses()
        ]
        return reference(rows, pageNo, pageSize)

    return app
