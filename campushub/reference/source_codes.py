"""The codes the source systems send outside the national tables, declared once: what each
connector accepts (its stream's contract) and what the unified layer maps it to are read here."""

from __future__ import annotations

# 财务系统: a bill's 缴费状态 -> the unified layer's status.
BILL_STATUS = {"已缴清": "paid", "部分缴费": "partial", "未缴费": "unpaid"}
# 人事系统: gender as text -> GB/T 2261.1's code.
SEX_TEXT = {"男": "1", "女": "2"}
# 人事系统: employment statuses.
EMPLOYMENT_STATUS = frozenset({"在职", "退休", "离职"})
# 一卡通: an account's holder type (id_type) -> whose number id_no is.
CARD_HOLDER_KIND = {"1": "student", "2": "staff"}
# 一卡通: account statuses; a frozen account's balance is held, not refundable.
CARD_STATUS = frozenset({"正常", "挂失", "冻结"})
CARD_STATUS_HELD = "冻结"
