"""Protection of resident ID numbers: encrypted at rest, matched by a keyed hash.

The key comes from `CAMPUSHUB_ID_KEY` (a Fernet key). In development, when it is unset, a key
is generated on first use into `data/id.key` (git-ignored) and reused after. The number itself
never appears in logs, metadata or error messages: callers get ciphertext, a hash, or a mask.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import cache

from cryptography.fernet import Fernet

from campushub.models.secrets import secret
from campushub.reference.identity import RESIDENT_ID


@cache
def _key() -> bytes:
    return secret("CAMPUSHUB_ID_KEY", "id.key", lambda: Fernet.generate_key().decode()).encode()


@cache
def _fernet() -> Fernet:
    return Fernet(_key())


@cache
def _hash_key() -> bytes:
    # A separate key for hashing, derived from the same secret, so a hash leaks nothing usable
    # for decryption and the two uses of the key never mix.
    return hmac.new(base64.urlsafe_b64decode(_key()), b"campushub id-number hash", hashlib.sha256).digest()


def encrypt_id(id_number: str) -> bytes:
    return _fernet().encrypt(id_number.encode())


def decrypt_id(cipher: bytes) -> str:
    return _fernet().decrypt(cipher).decode()


def id_hash(id_number: str, id_type: str = RESIDENT_ID) -> str:
    """The keyed hash people are matched by. Another document's number is hashed with its type:
    passports of two countries, or a passport and a permit, may share a number."""
    matched = id_number.upper() if id_type == RESIDENT_ID else f"{id_type}:{id_number.upper()}"
    return hmac.new(_hash_key(), matched.encode(), hashlib.sha256).hexdigest()


def mask_id(id_number: str) -> str:
    """A resident identity number's first 3 and last 4 characters shown: 440***********1234. Of
    a shorter document's number, at most a quarter at either end, so most of it stays hidden:
    H1*****78 for a travel permit."""
    length = len(id_number)
    lead, tail = min(3, length // 4), min(4, (length + 1) // 4) if length >= 4 else 0
    return id_number[:lead] + "*" * (length - lead - tail) + id_number[length - tail :]
