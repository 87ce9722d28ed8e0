"""Documents beside the GraphQL endpoint: a work order's PDF and the public verification of one.

- `GET /api/work-orders/{id}/pdf` (bearer token): the work order as a PDF ready for signature
  and stamp, carrying its verification code — only for the person it is about and the officers
  who process it; audited like any read.
- `GET /api/verify?code=…` (no sign-in: the code is printed on the paper): whether the code
  belongs to a work order whose snapshot still signs to it, with the document's summary (ID
  numbers masked). A code of the wrong shape is 400, an unknown or tampered one 404.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from campushub.graphql.audit import AuditTrail
from campushub.graphql.auth import AuthError, verify_token
from campushub.graphql.context import RequestContext
from campushub.graphql.workorders import (
    CODE_SHAPE,
    STATUS_LABELS,
    printed_value,
    shown_fields,
    verified,
    work_order_for,
)
from campushub.models.engine import once_more_if_disconnected
from campushub.models.quality import mask_phone

CST = dt.timezone(dt.timedelta(hours=8))
UNIVERSITY = "广东海洋大学"
FONT = "STSong-Light"  # a standard Adobe CJK font: PDF readers supply it, nothing to embed


def _public_display(field: Mapping[str, Any], name: str) -> str:
    """A field as the public verification page shows it, to anyone holding the code: the phone
    masked, and the person's name as masked as the requester's."""
    display = field["display"] or ""
    if field["name"] == "phone":
        return mask_phone(display)
    if field["name"] == "name" or (name and display == name):  # a corrected name, too
        return display[:1] + "*" * (len(display) - 1)
    return display


@cache
def _register_font() -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont(FONT))


def render_pdf(row: Mapping[str, Any], verify_url: str) -> bytes:
    """One A4 page: title, the confirmed values with their sources, the verification code."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    _register_font()
    snapshot = row["snapshot"]
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, pageCompression=1)
    pdf.setTitle(f"{snapshot['form_title']} {row['public_id']}")
    width, height = A4
    y = height - 72
    pdf.setFont(FONT, 18)
    pdf.drawCentredString(width / 2, y, f"{UNIVERSITY} {snapshot['form_title']}")
    y -= 28
    pdf.setFont(FONT, 9)
    issued = dt.datetime.fromisoformat(snapshot["created_at"]).astimezone(CST)
    pdf.drawCentredString(width / 2, y, f"业务工单 {row['public_id']}    提交时间 {issued:%Y-%m-%d %H:%M}")
    y -= 32
    for field in snapshot["fields"]:
        pdf.setFont(FONT, 11)
        pdf.drawString(72, y, f"{field['label']}：")
        pdf.drawString(200, y, printed_value(field)[:60])
        pdf.setFont(FONT, 7)
        origin = field["source_label"] or ""
        if field.get("as_of"):
            origin += f" · {dt.datetime.fromisoformat(field['as_of']).astimezone(CST):%Y-%m-%d}"
        if field.get("self_declared") and field.get("note"):
            origin += f" · 本人更正：{field['note'][:40]}"
        pdf.drawRightString(width - 72, y, origin)
        y -= 22
    y -= 20
    pdf.setFont(FONT, 10)
    pdf.drawString(72, y, "数据来源已标注于各项右侧；“本人申报”为申请人自行填写或更正的内容。")
    y -= 40
    pdf.drawString(72, y, "经办人签字：")
    pdf.drawString(320, y, "（盖章）")
    y -= 60
    pdf.setFont(FONT, 12)
    pdf.drawString(72, y, f"验证码 Verification code: {row['verification_code']}")
    y -= 16
    pdf.setFont(FONT, 8)
    pdf.drawString(72, y, f"核验 Verify at {verify_url}?code={row['verification_code']}")
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


class DocumentRoutes:
    def __init__(self, engine: Engine, development: bool) -> None:
        self.engine = engine
        self.development = development

    async def pdf(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        request_id = str(uuid.uuid4())
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("missing bearer token")
            principal = verify_token(token.strip())
        except AuthError as error:
            return JSONResponse(
                {"message": str(error), "requestId": request_id},
                401,
                {"WWW-Authenticate": 'Bearer realm="campushub"', "X-Request-ID": request_id},
            )
        verify_url = str(request.url_for("verify_page"))

        def build() -> tuple[int, bytes | dict[str, str]]:
            audit = AuditTrail(request_id, principal.subject, principal.role)
            with self.engine.connect() as connection:
                context = RequestContext(principal, connection, audit, request_id, self.development)
                try:
                    row = work_order_for(context, request.path_params["public_id"], "pdf")
                    outcome: tuple[int, bytes | dict[str, str]] = (200, render_pdf(row, verify_url))
                except DBAPIError:
                    raise  # the database failed: no answer about the work order
                except Exception as error:  # Forbidden: same answer whether it exists or not
                    outcome = (404, {"message": getattr(error, "message", "not found"), "requestId": request_id})
                audit.write(connection)
                connection.commit()
            return outcome

        status, body = await run_in_threadpool(once_more_if_disconnected, build)
        if isinstance(body, dict):
            return JSONResponse(body, status, {"X-Request-ID": request_id})
        filename = f"work-order-{request.path_params['public_id']}.pdf"
        return Response(
            body,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Request-ID": request_id},
        )

    async def verify(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        code = request.query_params.get("code", "").strip().upper()
        if not CODE_SHAPE.fullmatch(code):
            return JSONResponse(
                {"valid": False, "message": "验证码格式不对：应为 XXXX-XXXX-XXXX-XXXX（字母 A-Z 与数字 2-7）"}, 400
            )

        def check() -> dict[str, Any] | None:
            request_id = str(uuid.uuid4())
            with self.engine.connect() as connection:
                row = verified(connection, code)
                if row is None:
                    return None
                # Who checked a code is not known; that it was checked is still recorded.
                audit = AuditTrail(request_id, "verify", "public")
                audit.read(row["subject_person_id"], "work_order", ["verification"], "verify")
                audit.write(connection)
                connection.commit()
            snapshot = row["snapshot"]
            name = snapshot.get("requester_name") or ""
            masked_name = name[:1] + "*" * (len(name) - 1)
            return {
                "valid": True,
                "workOrder": row["public_id"],
                "formTitle": snapshot["form_title"],
                "issuedAt": snapshot["created_at"],
                "status": STATUS_LABELS[row["status"]],
                "requesterName": masked_name,
                "fields": [
                    {
                        "label": field["label"],
                        "display": _public_display(field, name),
                        "sourceLabel": field["source_label"],
                    }
                    for field in shown_fields(snapshot)
                ],
            }

        found = await run_in_threadpool(once_more_if_disconnected, check)
        if found is None:
            return JSONResponse({"valid": False, "message": "验证码无效：没有与之对应的工单，或内容已被改动"}, 404)
        return JSONResponse(found)
