"""GraphQL over HTTP as the specification (graphql-over-http draft) asks, auth at the door,
errors that leak nothing, limits, production vs development mode, and the document cache.

Everything but the unit tests of `verify_token` and `DocumentCache` talks to the API over a real
socket (`hub_api`: SQLite and PostgreSQL), as a client would.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from graphql import parse as graphql_parse
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import ProgrammingError

import campushub.graphql.app as app_module
from campushub.graphql.app import MAX_BODY_BYTES, ApiSettings, DocumentCache
from campushub.graphql.audit import AuditTrail
from campushub.graphql.auth import AUDIENCE, ISSUER, AuthError, Principal, development_secret, mint_token, verify_token
from campushub.graphql.execution import THREADS_SETTING
from campushub.graphql.limits import MAX_PAGE_SIZE, Limits
from campushub.graphql.schema import SCHEMA
from campushub.models.service import AuditEntry
from tests.api_support import ApiHub, ApiServer

GRAPHQL_RESPONSE = "application/graphql-response+json"
ME = "{ me { subject role } }"
PREFILL_CERTIFICATE = '{ prefill(formId: "enrollment_certificate") { fields { name value source asOf quality } } }'
MUTATION = 'mutation { resolveQuarantine(id: "0", resolution: "never runs") { id } }'
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ------------------------------------------------------------------------------ helpers
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def student_headers(hub: ApiHub) -> dict[str, str]:
    return bearer(hub.as_role("student").token)


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers or {}, timeout=30)


def request_id_of(response: httpx.Response) -> str:
    """The response's request id, after checking every error carries the same one."""
    request_id = response.headers.get("x-request-id", "")
    assert UUID.match(request_id), f"no request id on a {response.status_code}: {dict(response.headers)}"
    if response.headers.get("content-type", "").startswith(("application/json", GRAPHQL_RESPONSE)):
        for error in response.json().get("errors", []):
            assert error["extensions"]["requestId"] == request_id, error
    return request_id


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    request_id_of(response)
    errors = response.json().get("errors")
    assert errors, response.text
    return errors


def codes_of(response: httpx.Response) -> set[str]:
    return {error["extensions"]["code"] for error in errors_of(response)}


def claims_for(principal: Principal, **overrides: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "sub": principal.subject,
        "role": principal.role,
        "iat": now,
        "exp": now + dt.timedelta(hours=1),
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    if principal.org_unit:
        claims["org"] = principal.org_unit
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


# ------------------------------------------------------------------ requests and answers
def test_post_json_answers_the_query(hub_api: ApiHub) -> None:
    student = hub_api.users["student"]
    response = post(hub_api.url, {"query": ME}, student_headers(hub_api))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    request_id_of(response)
    assert response.json() == {"data": {"me": {"subject": student.subject, "role": "student"}}}


def test_post_json_with_a_charset_and_variables_and_operation_name(hub_api: ApiHub) -> None:
    document = (
        "query Mine($n: Int!) { me { accessLog(first: $n) { pageInfo { hasNextPage } } } } query Other { forms { id } }"
    )
    response = httpx.post(
        hub_api.url,
        content=json.dumps({"query": document, "variables": {"n": 1}, "operationName": "Mine"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", **student_headers(hub_api)},
    )
    assert response.status_code == 200, response.text
    assert set(response.json()["data"]["me"]["accessLog"]["pageInfo"]) == {"hasNextPage"}


def test_get_answers_a_query_from_query_parameters(hub_api: ApiHub) -> None:
    document = "query Who($first: Int) { me { subject accessLog(first: $first) { nodes { at } } } }"
    response = httpx.get(
        hub_api.url,
        params={"query": document, "variables": json.dumps({"first": 2}), "operationName": "Who"},
        headers=student_headers(hub_api),
    )
    assert response.status_code == 200, response.text
    request_id_of(response)
    me = response.json()["data"]["me"]
    assert me["subject"] == hub_api.users["student"].subject
    assert len(me["accessLog"]["nodes"]) <= 2


@pytest.mark.parametrize(
    ("document", "operation_name"),
    [(MUTATION, None), (f"query Q {{ me {{ subject }} }} {MUTATION.replace('mutation', 'mutation M')}", "M")],
    ids=["mutation", "mutation-chosen-by-name"],
)
def test_a_mutation_over_get_is_405_and_never_runs(hub_api: ApiHub, document: str, operation_name: str | None) -> None:
    params = {"query": document, **({"operationName": operation_name} if operation_name else {})}
    response = httpx.get(hub_api.url, params=params, headers=bearer(hub_api.as_role("steward").token))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert codes_of(response) == {"BAD_REQUEST"}
    assert "data" not in response.json()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_are_405(hub_api: ApiHub, method: str) -> None:
    response = httpx.request(
        method, hub_api.url, json={"query": ME}, headers={"Accept": "application/json", **student_headers(hub_api)}
    )
    assert response.status_code == 405
    assert {part.strip() for part in response.headers["allow"].split(",")} == {"GET", "POST"}
    if method == "HEAD":  # no body to carry errors
        assert UUID.match(response.headers["x-request-id"])
    else:
        assert codes_of(response) == {"BAD_REQUEST"}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/graphql", "multipart/form-data"]
)
def test_post_without_a_json_content_type_is_415(hub_api: ApiHub, content_type: str) -> None:
    response = httpx.post(
        hub_api.url,
        content=json.dumps({"query": ME}).encode(),
        headers={"Content-Type": content_type, **student_headers(hub_api)},
    )
    assert response.status_code == 415
    assert codes_of(response) == {"BAD_REQUEST"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body: not JSON"),
        (b"\xff\xfe\x00", "body: not JSON"),
        (b'"just a string"', "a JSON object with a query"),
        (b"{}", "query: a non-empty string"),
        (b'{"query": "   "}', "query: a non-empty string"),
        (b'{"query": 42}', "query: a non-empty string"),
        (b'{"query": "{ me { subject } }", "variables": [1, 2]}', "variables: a JSON object"),
        (b'{"query": "{ me { subject } }", "variables": "{}"}', "variables: a JSON object"),
        (b'{"query": "{ me { subject } }", "operationName": 7}', "operationName: a string"),
        (b'[{"query": "{ me { subject } }"}, {"query": "{ forms { id } }"}]', "batched requests are not supported"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "string",
        "no-query",
        "blank-query",
        "query-not-string",
        "variables-list",
        "variables-string",
        "operation-name-number",
        "batched",
    ],
)
def test_a_body_that_is_not_a_graphql_request_is_400(hub_api: ApiHub, body: bytes, message: str) -> None:
    for accept in ("application/json", GRAPHQL_RESPONSE):
        response = httpx.post(
            hub_api.url,
            content=body,
            headers={"Content-Type": "application/json", "Accept": accept, **student_headers(hub_api)},
        )
        assert response.status_code == 400, (accept, response.text)
        assert response.headers["content-type"].startswith(accept)
        (error,) = errors_of(response)
        assert message in error["message"]
        assert "data" not in response.json()


def test_get_with_variables_that_are_not_json_is_400(hub_api: ApiHub) -> None:
    response = httpx.get(hub_api.url, params={"query": ME, "variables": "{oops"}, headers=student_headers(hub_api))
    assert response.status_code == 400
    assert "variables" in errors_of(response)[0]["message"]


def test_an_unknown_operation_name_is_400(hub_api: ApiHub) -> None:
    response = post(
        hub_api.url, {"query": "query A { me { subject } }", "operationName": "B"}, student_headers(hub_api)
    )
    assert response.status_code == 400
    assert "no such operation" in errors_of(response)[0]["message"]


@pytest.mark.parametrize(
    ("document", "kind"),
    [("{ me { subject ", "parse"), ("{ me { nosuchfield } }", "validation"), ("{ forms }", "validation")],
)
def test_graphql_response_json_answers_400_to_documents_that_fail(hub_api: ApiHub, document: str, kind: str) -> None:
    response = post(hub_api.url, {"query": document}, {"Accept": GRAPHQL_RESPONSE, **student_headers(hub_api)})
    assert response.status_code == 400, kind
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    body = response.json()
    assert "data" not in body  # the request never reached execution
    assert errors_of(response)[0]["locations"], "a document error points at where it is"


def test_graphql_response_json_answers_200_to_a_good_query(hub_api: ApiHub) -> None:
    response = post(
        hub_api.url, {"query": ME}, {"Accept": f"{GRAPHQL_RESPONSE}, application/json;q=0.9"} | student_headers(hub_api)
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    assert response.json()["data"]["me"]["role"] == "student"


@pytest.mark.parametrize("document", ["{ me { subject ", "{ me { nosuchfield } }"])
def test_legacy_json_answers_200_with_errors_to_documents_that_fail(hub_api: ApiHub, document: str) -> None:
    response = post(hub_api.url, {"query": document}, {"Accept": "application/json", **student_headers(hub_api)})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "data" not in response.json()
    assert errors_of(response)


@pytest.mark.parametrize("accept", ["text/csv", "application/xml", "text/html"])
def test_an_unacceptable_accept_is_406(hub_api: ApiHub, accept: str) -> None:
    response = post(hub_api.url, {"query": ME}, {"Accept": accept, **student_headers(hub_api)})
    assert response.status_code == 406
    assert GRAPHQL_RESPONSE in errors_of(response)[0]["message"]


def test_every_answer_has_its_own_request_id_and_every_error_carries_it(hub_api: ApiHub) -> None:
    headers = student_headers(hub_api)
    responses = [
        post(hub_api.url, {"query": ME}, headers),
        post(hub_api.url, {"query": ME}, headers),
        post(hub_api.url, {"query": "{ me { nosuchfield } }"}, headers),
        post(hub_api.url, {"query": '{ prefill(formId: "no-such-form") { filled } }'}, headers),
        post(hub_api.url, {"query": ME}),  # 401
        post(hub_api.url, {"nothing": True}, headers),  # 400
        httpx.get(hub_api.url, params={"query": MUTATION}, headers=headers),  # 405
        post(hub_api.url, {"query": ME}, {"Accept": "text/csv", **headers}),  # 406
        httpx.post(hub_api.url, content=b"x", headers={"Content-Type": "text/plain", **headers}),  # 415
    ]
    ids = [request_id_of(response) for response in responses]
    assert len(set(ids)) == len(ids), "request ids are per request"
    statuses = [response.status_code for response in responses]
    assert statuses == [200, 200, 200, 200, 401, 400, 405, 406, 415]
    # An error raised while executing carries the request id too, next to its own code.
    (not_found,) = responses[3].json()["errors"]
    assert not_found["extensions"] == {"code": "NOT_FOUND", "requestId": ids[3]}


# ------------------------------------------------------------------------------ auth
def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, None, algorithm="none")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing bearer token"),
        ("basic-scheme", "missing bearer token"),
        ("malformed", "invalid token"),
        ("expired", "token expired"),
        ("other-secret", "invalid token"),
        ("unsigned", "invalid token"),
        ("wrong-audience", "invalid token"),
        ("no-role-claim", "invalid token"),
        ("unknown-role", "unknown role 'admin'"),
        ("scoped-role-without-org", "needs an org unit"),
    ],
)
def test_untrusted_credentials_are_401_with_a_bearer_challenge(hub_api: ApiHub, case: str, message: str) -> None:
    student = hub_api.users["student"]
    officer = hub_api.users["college_officer"]
    secret = development_secret()
    headers = {
        "missing": {},
        "basic-scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "malformed": bearer("not.a.jwt"),
        "expired": bearer(mint_token(student, lifetime=dt.timedelta(hours=-1))),
        "other-secret": bearer(jwt.encode(claims_for(student), "another-secret-" + "x" * 32, algorithm="HS256")),
        "unsigned": bearer(_unsigned(claims_for(student))),
        "wrong-audience": bearer(jwt.encode(claims_for(student, aud="someone-else"), secret, algorithm="HS256")),
        "no-role-claim": bearer(jwt.encode(claims_for(student, role=None), secret, algorithm="HS256")),
        "unknown-role": bearer(jwt.encode(claims_for(student, role="admin"), secret, algorithm="HS256")),
        "scoped-role-without-org": bearer(jwt.encode(claims_for(officer, org=None), secret, algorithm="HS256")),
    }[case]
    response = post(hub_api.url, {"query": ME}, headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    (error,) = errors_of(response)
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert message in error["message"]
    assert "data" not in response.json()


def test_a_token_of_every_demo_role_is_accepted(hub_api: ApiHub) -> None:
    for role, principal in hub_api.users.items():
        answer = hub_api.as_role(role).query(ME)
        assert answer == {"data": {"me": {"subject": principal.subject, "role": role}}}


class _JwksServer:
    """A loopback HTTP server publishing a JWKS document, as the university SSO would."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A fresh path per server: the JWKS client is cached per URL.
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/{uuid.uuid4().hex}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks", daemon=True)

    def __enter__(self) -> _JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def sso_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[rsa.RSAPrivateKey]:
    """Production mode: an RSA key whose public half the SSO's JWKS endpoint publishes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "sso-2026", "use": "sig", "alg": "RS256"})
    with _JwksServer({"keys": [jwk]}) as server:
        monkeypatch.setenv("CAMPUSHUB_JWKS_URL", server.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        yield key


def _rs256(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = "sso-2026") -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _hand_signed_hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    def segment(value: dict[str, Any]) -> bytes:
        text = json.dumps(value, default=lambda moment: int(moment.timestamp()))
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=")

    signing_input = segment({"alg": "HS256", "typ": "JWT", "kid": kid}) + b"." + segment(claims)
    signature = base64.urlsafe_b64encode(hmac.new(secret, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def test_production_accepts_an_rs256_token_from_the_sso_key_set(sso_key: rsa.RSAPrivateKey) -> None:
    principal = Principal(subject="2026000001", role="college_officer", org_unit="01")
    assert verify_token(_rs256(sso_key, claims_for(principal, name="张三"))) == Principal(
        subject="2026000001", role="college_officer", org_unit="01", name="张三"
    )


def test_production_refuses_hs256_and_tokens_of_other_keys(sso_key: rsa.RSAPrivateKey) -> None:
    principal = Principal(subject="2026000001", role="student")
    # A development token: signed with the shared secret, not the SSO's key.
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(mint_token(principal))
    # The algorithm confusion: HS256 with the SSO's public key (which anyone has) as the secret.
    # PyJWT will not sign that, so the token is put together by hand.
    public_pem = sso_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(_hand_signed_hs256(claims_for(principal), public_pem, kid="sso-2026"))
    # An RS256 token from a key the SSO never published, under the published kid and another.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(_rs256(stranger, claims_for(principal)))
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(_rs256(stranger, claims_for(principal), kid="unknown"))
    # The SSO's key, but for another audience or issuer.
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(_rs256(sso_key, claims_for(principal, aud="another-app")))
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(_rs256(sso_key, claims_for(principal, iss="https://evil.example")))
    with pytest.raises(AuthError, match="token expired"):
        verify_token(_rs256(sso_key, claims_for(principal, exp=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))))


def test_a_key_set_that_cannot_be_read_is_a_401_that_names_no_address(
    sso_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{probe.getsockname()[1]}/internal-sso/jwks.json"
    monkeypatch.setenv("CAMPUSHUB_JWKS_URL", unreachable)
    token = _rs256(sso_key, claims_for(Principal(subject="2026000001", role="student")))
    with pytest.raises(AuthError) as refused:
        verify_token(token)
    assert str(refused.value) == "invalid token: no signing key of the SSO matches it"
    assert "127.0.0.1" not in str(refused.value) and "internal-sso" not in str(refused.value)


def test_production_mode_over_http(hub_api: ApiHub, sso_key: rsa.RSAPrivateKey) -> None:
    student = hub_api.users["student"]
    accepted = post(hub_api.url, {"query": ME}, bearer(_rs256(sso_key, claims_for(student))))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["data"]["me"] == {"subject": student.subject, "role": "student"}
    refused = post(hub_api.url, {"query": ME}, bearer(mint_token(student)))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")


# ------------------------------------------------------------------- errors leak nothing
# What an error must never show: SQL (upper-case keywords), traces, source paths, driver names.
LEAKS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|FROM|WHERE)\b|Traceback|File \"|\.py\b|/work/|/usr/|site-packages|sqlalchemy|psycopg"
)


def test_an_internal_error_in_a_resolver_shows_only_a_request_id(
    hub_api: ApiHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise ProgrammingError(
            "SELECT id_number_enc FROM person WHERE id = 1", {}, Exception("/work/campushub/graphql/schema.py:1")
        )

    monkeypatch.setattr(SCHEMA.graphql_schema.query_type.fields["forms"], "resolve", broken)
    response = post(hub_api.url, {"query": "{ forms { id } me { subject } }"}, student_headers(hub_api))
    assert response.status_code == 200  # the other fields still answer
    request_id = request_id_of(response)
    (error,) = response.json()["errors"]
    assert error["message"] == "internal error"
    assert error["extensions"] == {"code": "INTERNAL", "requestId": request_id}
    assert error["path"] == ["forms"]
    assert response.json()["data"] is None  # `forms` is non-null: the error nulls the whole answer
    assert not LEAKS.search(response.text), response.text


def test_a_failure_outside_the_resolvers_is_500_with_a_request_id(
    hub_api: ApiHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_write(*_: Any, **__: Any) -> None:
        raise ProgrammingError(
            "INSERT INTO audit_entry VALUES (...)", {}, Exception("/work/campushub/graphql/audit.py")
        )

    # No answer leaves without its audit rows: when they cannot be written, the answer is withheld
    # (a query's are written with those of the queries beside it, a mutation's with it).
    monkeypatch.setattr(app_module, "write_rows", cannot_write)
    monkeypatch.setattr(AuditTrail, "write", cannot_write)
    response = post(hub_api.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api))
    assert response.status_code == 500
    (error,) = errors_of(response)
    assert error["message"] == "internal error"
    assert error["extensions"]["code"] == "INTERNAL"
    assert "data" not in response.json()
    assert not LEAKS.search(response.text), response.text
    # A mutation's answer too: its audit rows commit with it, or neither does.
    refused = post(hub_api.url, {"query": MUTATION}, bearer(hub_api.as_role("steward").token))
    assert refused.status_code == 500 and "data" not in refused.json()


def test_a_request_that_fails_still_leaves_its_refusals_on_record(
    hub_api: ApiHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campushub.graphql.app import GraphQLApp
    from campushub.models.service import AuditEntry

    def broken_body(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the answer could not be put together")

    monkeypatch.setattr(GraphQLApp, "_body", broken_body)
    # A student asking for another student's record, in a request that then fails.
    response = post(hub_api.url, {"query": '{ student(studentNo: "000000000000") { name } }'}, student_headers(hub_api))
    assert response.status_code == 500
    with hub_api.engine.connect() as connection:
        rows = connection.execute(
            select(AuditEntry.entity, AuditEntry.outcome).where(AuditEntry.request_id == request_id_of(response))
        ).all()
    assert rows == [("student", "denied")]


@pytest.mark.parametrize(
    "document",
    [
        "{ me { subject ",
        '{ students(filter: {entryYear: "x"}) { edges { cursor } } }',
        '{ students(after: "bm90LWEtY3Vyc29y") { edges { cursor } } }',
        '{ student(studentNo: "\' OR 1=1 --") { name } }',
    ],
)
def test_user_errors_name_no_sql_paths_or_traces(hub_api: ApiHub, document: str) -> None:
    response = post(hub_api.url, {"query": document}, bearer(hub_api.as_role("college_officer").token))
    assert response.status_code in (200, 400)
    assert errors_of(response)
    assert not LEAKS.search(response.text), response.text


# ------------------------------------------------------------------------------ limits
def _limit_errors(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert "data" not in response.json(), "a document over a limit never executes"
    errors = errors_of(response)
    assert {error["extensions"]["code"] for error in errors} == {"LIMIT_EXCEEDED"}
    return [error["message"] for error in errors]


def test_a_query_over_the_cost_budget_is_refused(hub_api: ApiHub) -> None:
    document = """query Everything {
      students(first: 100) { edges { node {
        studentNo name
        bills { billNo item amountFen paidFen status dueOn }
        payments { paymentNo billNo amountFen channel paidAt }
      } } }
    }"""
    (message,) = _limit_errors(post(hub_api.url, {"query": document}, bearer(hub_api.as_role("finance_officer").token)))
    assert re.fullmatch(r"Everything: estimated cost \d+ exceeds the budget of 5000", message), message


def test_a_page_size_given_by_a_variable_counts_at_its_maximum(hub_api: ApiHub) -> None:
    document = "query Q($n: Int) { students(first: $n) { edges { node { bills { billNo amountFen paidFen } } } } }"
    response = post(
        hub_api.url, {"query": document, "variables": {"n": 1}}, bearer(hub_api.as_role("finance_officer").token)
    )
    (message,) = _limit_errors(response)
    assert "exceeds the budget" in message


def test_too_many_aliases_are_refused(hub_api: ApiHub) -> None:
    document = "{ " + " ".join(f"a{n}: me {{ subject }}" for n in range(16)) + " }"
    (message,) = _limit_errors(post(hub_api.url, {"query": document}, student_headers(hub_api)))
    assert message == "anonymous operation: 16 aliases; at most 15"
    # At the limit, it runs.
    at_limit = "{ " + " ".join(f"a{n}: me {{ subject }}" for n in range(15)) + " }"
    assert len(hub_api.as_role("student").query(at_limit)["data"]) == 15


def test_too_many_operations_in_one_document_are_refused(hub_api: ApiHub) -> None:
    document = " ".join(f"query Q{n} {{ me {{ subject }} }}" for n in range(6))
    messages = _limit_errors(post(hub_api.url, {"query": document, "operationName": "Q0"}, student_headers(hub_api)))
    assert messages == ["6 operations in one document; at most 5"]


@pytest.mark.parametrize("first", [MAX_PAGE_SIZE + 1, 0, -1])
def test_a_page_size_out_of_bounds_is_refused(hub_api: ApiHub, first: int) -> None:
    document = "query Page($first: Int!) { students(first: $first) { edges { cursor } } }"
    response = post(
        hub_api.url,
        {"query": document, "variables": {"first": first}},
        bearer(hub_api.as_role("college_officer").token),
    )
    assert response.status_code == 200
    (error,) = errors_of(response)
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert error["message"] == f"first must be between 1 and {MAX_PAGE_SIZE}, got {first}"
    assert response.json()["data"] is None
    # The caller's own access log pages under the same bound.
    own = post(
        hub_api.url,
        {"query": f"{{ me {{ accessLog(first: {first}) {{ nodes {{ at }} }} }} }}"},
        student_headers(hub_api),
    )
    assert codes_of(own) == {"LIMIT_EXCEEDED"}


def test_a_null_page_size_is_a_client_error(hub_api: ApiHub) -> None:
    # `first: Int = 20` is nullable: an explicit null must be refused, not fail the resolver.
    response = post(
        hub_api.url,
        {"query": "{ students(first: null) { edges { cursor } } }"},
        bearer(hub_api.as_role("college_officer").token),
    )
    (error,) = errors_of(response)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["message"] == f"first must be between 1 and {MAX_PAGE_SIZE}, got null"


def test_nul_characters_in_variables_are_refused(hub_api: ApiHub) -> None:
    document = "query Q($no: String!) { student(studentNo: $no) { name } }"
    body = {"query": document, "variables": {"no": "2026\x00"}}
    response = post(hub_api.url, body, bearer(hub_api.as_role("college_officer").token))
    assert response.status_code == 400
    assert "NUL" in errors_of(response)[0]["message"]


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# Arguments a client controls, at the edges of what a resolver expects: each must come back as a
# client error (or an empty answer), never as an internal one, on either database.
HUGE = "9" * 23  # past any 64-bit key
NUL = "\\u0000"  # PostgreSQL refuses NUL in text; SQLite does not mind
HOSTILE = [
    ("steward", 'mutation { resolveQuarantine(id: "²", resolution: "x") { id } }'),
    ("steward", f'mutation {{ resolveConflict(id: "{HUGE}", resolution: "x") {{ id }} }}'),
    ("steward", 'mutation { resolveQuarantine(id: "-1", resolution: "x") { id } }'),
    ("steward", 'mutation { decideCorrection(id: "²", accept: true, note: "x") { id } }'),
    ("steward", f'mutation {{ decideCorrection(id: "{HUGE}", accept: false, note: "x") {{ id }} }}'),
    ("steward", f'{{ steward {{ quarantine(after: "{_cursor("quarantine:" + HUGE)}") {{ nodes {{ id }} }} }} }}'),
    ("steward", f'{{ steward {{ conflicts(after: "{_cursor("conflict:²")}") {{ nodes {{ id }} }} }} }}'),
    (
        "steward",
        f'{{ steward {{ quarantine(filter: {{source: "a{NUL}", reasonContains: "%_{NUL}"}}) {{ nodes {{ id }} }} }} }}',
    ),
    ("steward", f'{{ steward {{ conflicts(status: "{NUL}") {{ nodes {{ id }} }} }} }}'),
    ("college_officer", f'{{ student(studentNo: "{NUL}") {{ name }} }}'),
    ("college_officer", f'{{ students(after: "{_cursor("student:" + chr(0))}") {{ edges {{ cursor }} }} }}'),
    ("college_officer", "{ students(filter: {entryYear: 25448}) { edges { cursor } } }"),
    ("college_officer", f'{{ students(filter: {{entryYear: -1, classCode: "{NUL}"}}) {{ edges {{ cursor }} }} }}'),
    ("hr_officer", f'{{ staffMember(staffNo: "{NUL}") {{ name }} }}'),
    ("student", f'{{ me {{ accessLog(after: "{_cursor("log:" + HUGE)}") {{ nodes {{ at }} }} }} }}'),
    ("student", f'{{ workOrder(id: "{NUL}") {{ id }} }}'),
    ("student", f'{{ prefill(formId: "{NUL}") {{ filled }} }}'),
    ("student", f'mutation {{ submitWorkOrder(formId: "{NUL}", answers: []) {{ id }} }}'),
]


@pytest.mark.parametrize(("role", "document"), HOSTILE, ids=[f"{n}-{role}" for n, (role, _) in enumerate(HOSTILE)])
def test_hostile_arguments_are_client_errors_not_internal_ones(hub_api: ApiHub, role: str, document: str) -> None:
    response = post(hub_api.url, {"query": document}, bearer(hub_api.as_role(role).token))
    assert response.status_code == 200, response.text
    request_id_of(response)
    codes = {error["extensions"]["code"] for error in response.json().get("errors", [])}
    assert "INTERNAL" not in codes, response.text


@pytest.fixture(scope="module")
def strict_api(hub_api: ApiHub) -> Iterator[str]:
    """The API on the same database with a tight depth limit: the schema's natural depth is
    below the default maximum, so only a lower one shows the check at work over HTTP."""
    with ApiServer(hub_api.engine, ApiSettings(limits=Limits(max_depth=4))) as server:
        yield server.url


def test_a_query_deeper_than_the_maximum_is_refused(hub_api: ApiHub, strict_api: str) -> None:
    deep = "query Deep { students { edges { node { college { code } } } } }"  # depth 5
    response = post(strict_api, {"query": deep}, bearer(hub_api.as_role("college_officer").token))
    assert _limit_errors(response) == ["Deep: depth 5 exceeds the maximum of 4"]
    # Fragments do not hide depth.
    hidden = "query Hidden { students { ...E } } fragment E on StudentConnection { edges { node { major { name } } } }"
    response = post(strict_api, {"query": hidden}, bearer(hub_api.as_role("college_officer").token))
    assert _limit_errors(response) == ["Hidden: depth 5 exceeds the maximum of 4"]
    shallow = post(strict_api, {"query": "{ me { student { college { code } } } }"}, student_headers(hub_api))
    assert shallow.status_code == 200 and "errors" not in shallow.json(), shallow.text


def test_limit_errors_are_400_in_graphql_response_json(hub_api: ApiHub) -> None:
    document = "{ " + " ".join(f"a{n}: me {{ subject }}" for n in range(20)) + " }"
    response = post(hub_api.url, {"query": document}, {"Accept": GRAPHQL_RESPONSE, **student_headers(hub_api)})
    assert response.status_code == 400
    assert codes_of(response) == {"LIMIT_EXCEEDED"}


# --------------------------------------------------------------- production vs development
@pytest.mark.parametrize(
    "document", ["{ __schema { types { name } } }", '{ __type(name: "Student") { fields { name } } }']
)
def test_production_refuses_introspection(hub_api: ApiHub, document: str) -> None:
    response = post(hub_api.url, {"query": document}, student_headers(hub_api))
    assert response.status_code == 200
    assert "data" not in response.json()
    assert any("introspection" in error["message"].lower() for error in errors_of(response))


def test_production_makes_no_suggestions(hub_api: ApiHub) -> None:
    response = post(hub_api.url, {"query": "{ me { subjec } studnts { edges { cursor } } }"}, student_headers(hub_api))
    messages = [error["message"] for error in errors_of(response)]
    assert any("subjec" in message for message in messages)
    assert not any("Did you mean" in message for message in messages), messages
    # Nor in the errors of variables, which come from execution: they would map the input types.
    typo = "query Page($filter: StudentFilter) { students(filter: $filter) { edges { cursor } } }"
    response = post(
        hub_api.url, {"query": typo, "variables": {"filter": {"colegeCode": "x"}}}, student_headers(hub_api)
    )
    messages = [error["message"] for error in errors_of(response)]
    assert any("colegeCode" in message for message in messages), messages
    assert not any("Did you mean" in message for message in messages), messages


def test_production_serves_no_graphiql(hub_api: ApiHub) -> None:
    response = httpx.get(hub_api.url, headers={"Accept": "text/html", **student_headers(hub_api)})
    assert response.status_code == 406
    assert "<html" not in response.text.lower()


@pytest.fixture(scope="module")
def dev_api(hub_api: ApiHub) -> Iterator[str]:
    with ApiServer(hub_api.engine, ApiSettings(development=True)) as server:
        yield server.url


def test_development_allows_introspection_and_suggests(hub_api: ApiHub, dev_api: str) -> None:
    headers = student_headers(hub_api)
    response = post(dev_api, {"query": '{ __type(name: "Me") { fields { name } } }'}, headers)
    assert response.status_code == 200, response.text
    names = {field["name"] for field in response.json()["data"]["__type"]["fields"]}
    assert {"subject", "role", "accessLog"} <= names
    schema = post(dev_api, {"query": "{ __schema { queryType { name } mutationType { name } } }"}, headers)
    assert schema.json()["data"]["__schema"] == {"queryType": {"name": "Query"}, "mutationType": {"name": "Mutation"}}
    typo = post(dev_api, {"query": "{ me { subjec } }"}, headers)
    assert any("Did you mean 'subject'?" in error["message"] for error in errors_of(typo))
    query = "query Page($filter: StudentFilter) { students(filter: $filter) { edges { cursor } } }"
    typo = post(dev_api, {"query": query, "variables": {"filter": {"colegeCode": "x"}}}, headers)
    assert any("Did you mean 'collegeCode'" in error["message"] for error in errors_of(typo))


def test_development_serves_graphiql_on_get_for_html(dev_api: str) -> None:
    response = httpx.get(dev_api, headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()
    request_id_of(response)


# ------------------------------------------------------------------------ document cache
def test_the_same_document_is_parsed_and_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[str] = []

    def counting_parse(source: str, *args: Any, **kwargs: Any) -> Any:
        parses.append(source)
        return graphql_parse(source, *args, **kwargs)

    monkeypatch.setattr(app_module, "parse", counting_parse)
    cache = DocumentCache(SCHEMA.graphql_schema, ApiSettings())
    first = cache.prepare(ME)
    second = cache.prepare(ME)
    assert parses == [ME]
    assert second is first and first.document is not None and not first.errors
    # A document that fails is cached with its verdict too: a prober gets no cheaper parse.
    broken = "{ me { nosuchfield } }"
    assert cache.prepare(broken).errors and cache.prepare(broken).document is None
    assert parses == [ME, broken]
    other = "{ forms { id } }"
    cache.prepare(other)
    assert parses == [ME, broken, other]


def test_the_document_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "DOCUMENT_CACHE_SIZE", 2)
    cache = DocumentCache(SCHEMA.graphql_schema, ApiSettings())
    documents = [f"{{ a{n}: me {{ subject }} }}" for n in range(3)]
    prepared = [cache.prepare(document) for document in documents]
    assert cache.prepare(documents[2]) is prepared[2]
    assert cache.prepare(documents[0]) is not prepared[0], "the least recently used entry was evicted"


def test_a_request_past_its_deadline_is_504_and_its_statement_is_stopped(
    hub_api: ApiHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operations run on the event loop, which nothing can abandon: the database stops the
    request's statement at the deadline instead (SQLite interrupts it, PostgreSQL cancels it)."""
    if hub_api.engine.dialect.name == "sqlite":
        monkeypatch.setattr(app_module, "REQUEST_TIMEOUT_S", 0.0)
        response = post(hub_api.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api))
        assert response.status_code == 504
        (error,) = errors_of(response)
        assert error["extensions"] == {"code": "TIMEOUT", "requestId": request_id_of(response)}

    # Another writer (the pipeline) holds a lock the audit insert needs: the insert waits for it
    # until the deadline — not for SQLite's 30 s busy timeout, nor for ever on PostgreSQL — and
    # the request is then 504, its statement stopped: it writes nothing once the lock is gone.
    import time

    monkeypatch.setattr(app_module, "REQUEST_TIMEOUT_S", 0.5)
    with _another_writer_holding_the_audit_log(hub_api):
        started = time.monotonic()
        locked_out = post(hub_api.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api))
        waited = time.monotonic() - started
    assert locked_out.status_code == 504 and waited < 5
    (error,) = errors_of(locked_out)
    assert error["extensions"] == {"code": "TIMEOUT", "requestId": request_id_of(locked_out)}
    monkeypatch.undo()
    assert post(hub_api.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api)).status_code == 200
    with hub_api.engine.connect() as connection:
        written = select(func.count()).where(AuditEntry.request_id == request_id_of(locked_out))
        assert connection.execute(written).scalar_one() == 0


@contextlib.contextmanager
def _another_writer_holding_the_audit_log(hub: ApiHub) -> Iterator[None]:
    if hub.engine.dialect.name == "sqlite":
        import sqlite3

        pipeline = sqlite3.connect(str(hub.engine.url.database), isolation_level=None)
        try:
            pipeline.execute("BEGIN IMMEDIATE")
            yield
        finally:
            pipeline.execute("ROLLBACK")
            pipeline.close()
        return
    with hub.engine.connect() as pipeline:
        pipeline.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))  # inserts wait; reads do not
        yield
        pipeline.rollback()


# Operations on the event loop read on the connection their worker keeps; on threads, on pooled ones.
@pytest.mark.parametrize("threads", [0, 2])
def test_a_query_outlives_its_connections_being_closed(
    hub_api: ApiHub, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's connections are not pinged before each use: when the database closes them (a
    restart, an idle timeout), the query that meets a dead one — the connection its worker keeps
    for reads, or a pooled one — runs again on a fresh connection, and so does the write of its
    audit rows on the connection held for them — answered, and audited once."""
    if hub_api.engine.dialect.name != "postgresql":
        pytest.skip("an SQLite connection is a file: nothing closes it from the other side")
    monkeypatch.setenv(THREADS_SETTING, str(threads))
    engine = app_module.api_engine(hub_api.engine.url.render_as_string(hide_password=False))
    backends: list[int] = []
    event.listen(engine, "connect", lambda dbapi_connection, _: backends.append(dbapi_connection.info.backend_pid))

    def close_the_pools_connections() -> None:
        with engine.connect(), engine.connect():  # idle in the pool, besides the ones reads and audit writes hold
            pass
        assert backends and engine.pool.checkedin() > 0
        with hub_api.engine.connect() as admin:
            for pid in backends:
                admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

    try:
        with ApiServer(engine, ApiSettings()) as server:
            assert post(server.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api)).status_code == 200
            close_the_pools_connections()
            connected = len(backends)
            response = post(server.url, {"query": PREFILL_CERTIFICATE}, student_headers(hub_api))
            reconnected = len(backends) > connected
            # The document routes too: a well-shaped code no work order has is still "not valid", not a 500.
            close_the_pools_connections()
            verified = httpx.get(server.url.replace("/graphql", "/api/verify"), params={"code": "AAAA-BBBB-CCCC-DDDD"})
    finally:
        engine.dispose()
    assert verified.status_code == 404 and verified.json()["valid"] is False
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()
    assert reconnected  # the request was answered on a new connection
    with hub_api.engine.connect() as connection:
        audited = connection.execute(
            select(func.count()).where(AuditEntry.request_id == request_id_of(response))
        ).scalar_one()
    assert audited == 1


def test_executor_runs_inline_or_abandons_a_thread_at_the_timeout() -> None:
    import asyncio
    import time

    from campushub.graphql.execution import Executor

    async def waited_for_a_slow_call(executor: Executor) -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await executor.run(time.sleep, 0.5)
        return time.monotonic() - started

    assert asyncio.run(Executor(0, 0.01).run(sum, [1, 2, 3])) == 6
    assert asyncio.run(waited_for_a_slow_call(Executor(2, 0.05))) < 0.3  # the thread runs out alone
    assert asyncio.run(Executor(2, 1.0).run(sum, [1, 2])) == 3


def test_the_audit_rows_of_queries_ready_together_go_in_one_write() -> None:
    import asyncio

    from campushub.graphql.audit import TurnWriter

    writes: list[tuple[list[Any], float]] = []

    class Interrupted(BaseException):
        pass

    def write(rows: list[dict], by: float) -> None:
        if any(row.get("refused") for row in rows):
            raise RuntimeError("the database refused a row")
        if [row.get("interrupts") for row in rows] == [True]:  # its own write, after a shared one failed
            raise Interrupted
        writes.append(([row["request"] for row in rows], by))

    writer = TurnWriter(write)

    async def request(n: int, rows: int = 1, refused: bool = False, interrupts: bool = False, by: float = 100.0) -> str:
        await writer.write([{"request": n, "refused": refused, "interrupts": interrupts}] * rows, by)
        return f"answer {n}"

    async def turns() -> list[Any]:
        together = await asyncio.gather(request(1, by=30.0), request(2, rows=2, by=20.0), request(3))
        alone = await request(4)
        # A refused row withholds its own request's answer only: the others are written apart.
        mixed = await asyncio.gather(request(5), request(6, refused=True), request(7), return_exceptions=True)
        # Interrupted while writing them one by one: the requests not yet written are not answered.
        cut = await asyncio.gather(
            request(10, refused=True), request(11, interrupts=True), request(12), return_exceptions=True
        )
        return [*together, alone, *mixed, *cut]

    answers = asyncio.run(turns())
    assert answers[:4] == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert answers[4] == "answer 5" and answers[6] == "answer 7"
    assert isinstance(answers[5], RuntimeError)
    # Rows of the requests that were ready together went at once, by the earliest of their deadlines.
    assert writes[:2] == [([1, 2, 2, 3], 20.0), ([4], 100.0)]
    assert writes[2:] == [([5], 100.0), ([7], 100.0)]
    # The interruption goes on in the request that was writing (the first back); 12 was never
    # written, and neither it nor 11 is answered.
    assert isinstance(answers[7], Interrupted)
    assert all(isinstance(answer, RuntimeError) and "interrupted" in str(answer) for answer in answers[8:10])

    # A loop that stopped before its write ran leaves nothing in another loop's way.
    abandoned = asyncio.new_event_loop()
    stranded = abandoned.create_task(request(8))
    abandoned.call_soon(abandoned.stop)  # after the request queued its rows, before their write
    abandoned.run_forever()
    assert not stranded.done()
    stranded.cancel()  # what a worker's shutdown does to its requests in flight
    abandoned.run_until_complete(asyncio.gather(stranded, return_exceptions=True))
    abandoned.close()
    assert writes[-1] == ([8], 100.0)  # its read happened: its rows are written all the same
    assert asyncio.run(request(9)) == "answer 9" and writes[-1] == ([9], 100.0)


def test_an_answer_leaves_before_the_work_of_requests_that_arrived_while_it_ran() -> None:
    """On a worker's loop as uvicorn runs it (uvloop, a request's task made as its data comes
    in): a request arriving while another's operation runs waits for that answer to leave, not
    the other way round."""
    import asyncio
    import socket

    from campushub.graphql.audit import TurnWriter

    uvloop = pytest.importorskip("uvloop")  # what uvicorn runs a worker's loop on where it is installed
    events: list[str] = []
    writer = TurnWriter(lambda rows, _by: events.append(f"wrote {[row['request'] for row in rows]}"))
    later: list[asyncio.Task[None]] = []

    async def request(name: str, arriving: socket.socket | None = None) -> None:
        events.append(f"{name} operation")
        if arriving is not None:
            arriving.send(b"C")  # another request comes in meanwhile
        await writer.write([{"request": name}], 100.0)
        events.append(f"{name} answered")

    class Arrivals(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            later.append(asyncio.get_running_loop().create_task(request(data.decode())))

    async def worker() -> None:
        ours, theirs = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(Arrivals, ours)
        try:
            await request("A", arriving=theirs)
            for _ in range(100):  # bounded: C comes in at the loop's next look at its sockets
                if later:
                    break
                await asyncio.sleep(0.01)
            await asyncio.gather(*later)
        finally:
            transport.close()
            theirs.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(worker())
    finally:
        loop.close()
    assert events == [
        "A operation",
        "wrote ['A']",
        "A answered",
        "C operation",
        "wrote ['C']",
        "C answered",
    ]


def test_sqlite_checkpoints_run_off_the_request_path_and_stop_when_writes_do(tmp_path: Any) -> None:
    import time

    from sqlalchemy import text

    from campushub.graphql import sqlite_writes
    from campushub.models.engine import make_engine

    database = tmp_path / "wal.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE audit (n INTEGER, body BLOB)"))
    engine.dispose()
    log = sqlite_writes.Checkpoints(engine)
    before = database.stat().st_size
    for batch in range(6):  # ~6 MB: far past SQLite's 1,000-page threshold, over several commits
        with engine.begin() as connection:
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            connection.execute(
                text("INSERT INTO audit VALUES (:n, randomblob(1000))"), [{"n": batch * 1000 + n} for n in range(1000)]
            )
    assert database.stat().st_size == before  # every page still in the log: no commit checkpointed
    log.wrote()
    deadline = time.monotonic() + 10 * sqlite_writes.INTERVAL_S
    while log._thread is not None and log._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log._thread is not None and not log._thread.is_alive()  # it ended once writes stopped
    assert database.stat().st_size > before + 5_000_000  # the thread folded the log into the file
    engine.dispose()


def test_sqlite_audit_writes_queue_across_worker_processes(tmp_path: Any) -> None:
    """Two workers' locks on one database (two open files, as two processes have) exclude each
    other, and the waiter goes on the moment the holder is done."""
    import time

    from campushub.graphql.sqlite_writes import SQLiteWriters

    database = str(tmp_path / "campushub.db")
    first, second = SQLiteWriters(database), SQLiteWriters(database)
    entered = threading.Event()

    def other_worker() -> None:
        with second:
            entered.set()

    with first:
        waiter = threading.Thread(target=other_worker)
        waiter.start()
        assert not entered.wait(0.2)  # held out while the first writes
        released = time.monotonic()
    assert entered.wait(2) and time.monotonic() - released < 0.5
    waiter.join()


def test_a_worker_freezes_what_it_holds_at_startup_out_of_full_collections(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At its lifespan's start the app freezes the objects the worker holds (a full collection
    would walk them all, 56-73 ms here), and still shuts down cleanly."""
    import asyncio
    import gc

    from campushub.models.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'campushub.db'}")
    app = app_module.create_app(engine, ApiSettings(development=False))
    monkeypatch.setattr(app_module, "_heap_frozen", False)  # once per process: this test's lifespan is its first
    # Unfrozen afterwards only if nothing was frozen before: the pipeline's runs in this process
    # freeze its heap once, and tests check that they did.
    was_frozen = gc.get_freeze_count()
    held = [app]  # held since before startup, as the worker's schema and tables are
    sent: list[str] = []
    frozen_at_startup: list[bool] = []

    async def lifespan() -> None:
        messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        await messages.put({"type": "lifespan.startup"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                # a full collection walks what `get_objects` lists: all but the frozen
                frozen_at_startup.append(all(found is not held for found in gc.get_objects()))
                await messages.put({"type": "lifespan.shutdown"})

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, send)

    try:
        asyncio.run(lifespan())
    finally:
        if not was_frozen:
            gc.unfreeze()
        engine.dispose()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert frozen_at_startup == [True]


def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_not(hub_api: ApiHub) -> None:
    padding = " " * MAX_BODY_BYTES
    body = json.dumps({"query": "{ me { subject } }" + padding}).encode()
    headers = {"Content-Type": "application/json", **student_headers(hub_api)}
    declared = httpx.post(hub_api.url, content=body, headers=headers)
    assert declared.status_code == 413, declared.text
    assert request_id_of(declared)

    def chunks() -> Iterator[bytes]:  # sent chunked: no length to go by
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    streamed = httpx.post(hub_api.url, content=chunks(), headers=headers)
    assert streamed.status_code == 413, streamed.text
    # Under the limit, the same way, it is answered.
    small = json.dumps({"query": "{ me { subject } }"}).encode()
    assert httpx.post(hub_api.url, content=iter([small]), headers=headers).status_code == 200
    # Refused by its declared length before a byte of it is sent: the server does not wait for it.
    url = httpx.URL(hub_api.url)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {headers['Authorization']}\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port), timeout=10) as raw:
        raw.sendall(head.encode())
        assert raw.recv(64).startswith(b"HTTP/1.1 413")
