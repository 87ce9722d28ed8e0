"""Who is asking: bearer JWTs, verified on every request.

Two ways to trust a token, chosen by the environment:
- development: HS256 with `CAMPUSHUB_JWT_SECRET` (generated into `data/jwt.secret`, which git
  ignores, when unset) — `campushub token` mints such tokens for the demo users;
- production: RS256 against the university SSO's key set (`CAMPUSHUB_JWKS_URL`, CAS/OIDC),
  with the issuer and audience it signs for.

A token names its subject (学号 or 工号), a role (one of the roles in `permissions.yaml`) and,
for roles scoped to an org unit, the unit's code. Anything else — expired, unsigned, signed
with another key or algorithm, missing a claim, naming an unknown role — is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import jwt

from campushub.graphql.permissions import ROLES
from campushub.models.secrets import secret

log = logging.getLogger("campushub.api")

ISSUER = os.environ.get("CAMPUSHUB_JWT_ISSUER", "campushub")
AUDIENCE = os.environ.get("CAMPUSHUB_JWT_AUDIENCE", "campushub")
REQUIRED_CLAIMS = ["exp", "iat", "sub", "role"]
LEEWAY_S = 30  # clock skew between the SSO and us


class AuthError(Exception):
    """A request whose credentials cannot be trusted: the API answers 401."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # 学号 or 工号, as the SSO knows the person
    role: str
    org_unit: str | None = None  # the college or office code a scoped role acts for
    name: str | None = None


@cache
def development_secret() -> str:
    return secret("CAMPUSHUB_JWT_SECRET", "jwt.secret", lambda: secrets.token_urlsafe(48))


@cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600)


class _VerifiedTokens:
    """Tokens whose signature and claims were verified, until they expire: a signed-in person
    sends the same token with every request, and PyJWT's checks cost more than answering a
    small query. Keyed by the exact token and the key that verified it, so another key (or
    none) never finds an entry; an entry lapses at the token's `exp`, as a fresh decode would
    (the key set of the SSO is itself cached for an hour, so no key change is missed that a
    fresh decode would see)."""

    # Signed-in people at once, per API worker: a busy hour of the service hall. An entry is
    # about 700 bytes (the token and the principal), so at most about 11 MB a worker.
    size = 16_384

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[Principal, float]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.time() > entry[1] + LEEWAY_S:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, str], principal: Principal, expires: float) -> None:
        with self._lock:
            self._entries[key] = (principal, expires)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)


_VERIFIED = _VerifiedTokens()


def verify_token(token: str) -> Principal:
    jwks_url = os.environ.get("CAMPUSHUB_JWKS_URL")
    cache_key = (jwks_url or development_secret(), token)
    principal = _VERIFIED.get(cache_key)
    if principal is not None:
        return principal
    try:
        if jwks_url:
            key = _jwks_client(jwks_url).get_signing_key_from_jwt(token).key
            algorithms = ["RS256"]
        else:
            key, algorithms = development_secret(), ["HS256"]
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_S,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as error:
        raise AuthError("token expired") from error
    except jwt.PyJWKClientError as error:
        # Its text can name the SSO's key-set address: the log has it, the client does not.
        log.warning("no signing key for a token from the SSO's key set: %s", error)
        raise AuthError("invalid token: no signing key of the SSO matches it") from error
    except jwt.InvalidTokenError as error:
        raise AuthError(f"invalid token: {error}") from error
    role = claims["role"]
    if role not in ROLES:
        raise AuthError(f"invalid token: unknown role {role!r}")
    if ROLES[role].scoped and not claims.get("org"):
        raise AuthError(f"invalid token: role {role!r} needs an org unit")
    principal = Principal(subject=str(claims["sub"]), role=role, org_unit=claims.get("org"), name=claims.get("name"))
    _VERIFIED.put(cache_key, principal, float(claims["exp"]))
    return principal


def mint_token(principal: Principal, *, lifetime: dt.timedelta = dt.timedelta(hours=8)) -> str:
    """A development token (HS256), as the SSO would issue one."""
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": principal.subject,
        "role": principal.role,
        "iat": now,
        "exp": now + lifetime,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    if principal.org_unit:
        claims["org"] = principal.org_unit
    if principal.name:
        claims["name"] = principal.name
    return jwt.encode(claims, development_secret(), algorithm="HS256")
