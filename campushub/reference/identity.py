"""Identity numbers: resident identity numbers (公民身份号码) per GB 11643-1999, and the other
identity documents a student or member of staff may register with (JY/T 1001's 身份证件类型码).

A resident identity number has 18 characters: a 6-digit area code, the birth date as YYYYMMDD, a
3-digit sequence whose last digit is odd for men and even for women, and an ISO 7064 MOD 11-2
check character (0-9 or X). The other documents — a Hong Kong, Macao or Taiwan resident's travel
permit, a foreigner's passport or permanent residence card — are held to their form alone: the
hub does not read a birth date or sex out of them.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from functools import lru_cache
from operator import mul

DOCUMENT_TYPES = "id_document_type"  # the code table (`campushub/reference/codes`) of the types below
RESIDENT_ID = "1"  # 居民身份证: the document a record names when it names none
PERMANENT_RESIDENCE = "9"  # 外国人永久居留身份证: its 2023 edition ends in a GB 11643 check character
# Document type (the codes of `codes/id_document_type.csv`) -> the form of its number.
DOCUMENT_FORMS: dict[str, re.Pattern[str]] = {
    # Hong Kong: the 港澳居民来往内地通行证 (H and 8 or 10 digits), the identity card (A123456(7)),
    # the SAR passport (K and 8 digits).
    "6": re.compile(r"H\d{8}(?:\d{2})?|[A-Z]{1,2}\d{6}\([0-9A]\)|[A-Z]\d{8}"),
    # Macao: the travel permit (M and 8 or 10 digits), the identity card (1234567(8)), the SAR passport.
    "7": re.compile(r"M\d{8}(?:\d{2})?|[157]\d{6}\(\d\)|[A-Z]{1,2}\d{7}"),
    "8": re.compile(r"\d{8}(?:\d{2})?"),  # 台湾居民来往大陆通行证: 8 digits, 10 on older permits
    PERMANENT_RESIDENCE: re.compile(r"[A-Z]{3}\d{12}|9\d{16}[0-9X]"),  # the 2017 and 2023 editions
    "A": re.compile(r"[A-Z0-9]{5,17}"),  # a passport: ICAO 9303 leaves the form to its issuer
}
OTHER_DOCUMENT_FORM = re.compile(r"[A-Z0-9]{4,20}")  # the kinds with no public form to hold them to


def document_type(sent: object) -> str:
    """The document a record's ID number belongs to: a number whose document is not named is a
    resident identity number."""
    return RESIDENT_ID if sent in (None, "") else str(sent)


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"


def check_character(first17: str) -> str:
    """The check character that completes the first 17 digits."""
    # map() over C-level callables: this runs once per person record in every sync.
    return _CHECK_CHARS[sum(map(mul, map(int, first17), _WEIGHTS)) % 11]


def make_id_number(area: str, birth: dt.date, sequence: int) -> str:
    first17 = f"{area}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_character(first17)


@lru_cache(maxsize=4096)
def _valid_date(yyyymmdd: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()
    except ValueError:
        return None


def id_number_problem(value: str) -> str | None:
    """Why `value` is not a valid identity number, or None when it is.

    The reason never repeats the number itself, so it is safe to log and to show a steward.
    """
    if len(value) != 18 or not value[:17].isdigit() or value[17] not in "0123456789X":
        return "id number: not 17 digits and a check character"
    if _valid_date(value[6:14]) is None:
        return "id number: birth date digits are not a real date"
    if check_character(value[:17]) != value[17]:
        return "id number: check digit does not match"
    return None


def birth_date_of(id_number: str) -> dt.date | None:
    return _valid_date(id_number[6:14])


def sex_code_of(id_number: str) -> str:
    """GB/T 2261.1 sex code implied by the sequence digit: odd men ('1'), even women ('2')."""
    return "1" if int(id_number[16]) % 2 else "2"


def id_number_disagreement(number: str, birth_date: dt.date | None, sex: str | None) -> str | None:
    """Why an ID number cannot be trusted for this person, or None: valid (GB 11643), and agreeing
    with the record's birth date and sex. Like `id_number_problem`, it never repeats the number."""
    problem = id_number_problem(number)
    if problem is None and birth_date is not None and birth_date_of(number) != birth_date:
        problem = "id number: birth date disagrees with the record"
    elif problem is None and sex in ("1", "2") and sex_code_of(number) != sex:
        problem = "id number: sex digit disagrees with the record"
    return problem


def id_number_as_written(value: str) -> str:
    """An ID number as its document prints it: people type a resident number's X in lower case,
    full-width digits from a Chinese input method, a space where the card has a gap."""
    return "".join(unicodedata.normalize("NFKC", value).split()).upper()


def id_document_problem(sent_type: object, value: str) -> str | None:
    """Why `value` cannot be a number of this kind of document (as `document_type` reads the
    type sent), or None. Like `id_number_problem`, the reason never repeats the number."""
    kind = document_type(sent_type)
    if kind == RESIDENT_ID:
        return id_number_problem(value)
    if not DOCUMENT_FORMS.get(kind, OTHER_DOCUMENT_FORM).fullmatch(value):
        return f"id number: not the form of a document of type {kind}"
    if kind == PERMANENT_RESIDENCE and len(value) == 18 and check_character(value[:17]) != value[17]:
        return "id number: check digit does not match"
    return None


def id_document_disagreement(sent_type: object, number: str, birth_date: dt.date | None, sex: str | None) -> str | None:
    """`id_number_disagreement` for any kind of document: only a resident identity number is
    held to the record's birth date and sex; the others only to their form."""
    if document_type(sent_type) == RESIDENT_ID:
        return id_number_disagreement(number, birth_date, sex)
    return id_document_problem(sent_type, number)
