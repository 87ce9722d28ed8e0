"""National standard code tables, shipped as CSV files beside this module.

| table                | standard                                  |
| -------------------- | ----------------------------------------- |
| sex                  | GB/T 2261.1 人的性别代码                  |
| ethnicity            | GB/T 3304 中国各民族名称的罗马字母拼写法和代码 |
| political_status     | GB/T 4762 政治面貌代码                    |
| student_status       | 学生当前状态码 (教育管理信息 data standard)   |
| education_level      | GB/T 4658 学历代码 (level being studied)  |
| professional_title   | GB/T 8561 专业技术职务代码                |
| grade_band           | 五级制 bands; the code is the score a band counts as |
| id_document_type     | 身份证件类型码 (JY/T 1001 教育管理基础代码)     |
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

TABLES = (
    "sex",
    "ethnicity",
    "political_status",
    "student_status",
    "education_level",
    "professional_title",
    "grade_band",
    "id_document_type",
)


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    name: str
    name_en: str


@cache
def code_table(table: str) -> dict[str, Code]:
    """The table's entries keyed by code, in file order."""
    if table not in TABLES:
        raise KeyError(f"unknown code table {table!r}; known: {', '.join(TABLES)}")
    text = files(__name__).joinpath(f"{table}.csv").read_text(encoding="utf-8")
    return {row["code"]: Code(**row) for row in csv.DictReader(text.splitlines())}


@cache
def code_by_name(table: str) -> dict[str, str]:
    """Reverse look-up: the Chinese name of an entry to its code."""
    return {entry.name: code for code, entry in code_table(table).items()}
