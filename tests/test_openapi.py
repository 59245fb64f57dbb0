"""openapi.json is the server's contract, and these tests keep it true.

- Its paths and methods are exactly server.ROUTES, plus OPTIONS on each, and
  every documented status is one server.py sends.
- Every request example is replayed against the WSGI app (default settings,
  fixed clock, under wsgiref's validator; webhook examples are signed here,
  since a signature depends on the key and the clock). The answer must have the
  example's x-status, be documented for the operation, match the documented
  schema, carry the documented headers (and no undocumented ones), and equal
  the response example of the same name (tokens aside).
- Every example validates against its own schema.
- The name schemas' patterns refuse exactly the characters the server refuses
  (in the Basic Multilingual Plane, all a JSON Schema pattern can spell plainly).

The schema validator below covers exactly the JSON Schema keywords the
document uses, and refuses any other: a keyword it does not know would be a
constraint silently ignored.
"""

from __future__ import annotations

import http
import io
import json
import re
from pathlib import Path

import pytest

import helpers
import server
from support_wsgi import environ_for, run_app

DOC_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
DOC = json.loads(DOC_PATH.read_text(encoding="utf-8"))

FIXED_NOW = 1735689600
API_KEY = "APItestkey"
API_SECRET = "test-secret-that-must-never-leak-0123456789"
ORIGIN = "https://app.example.com"

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Response headers that HTTP framing adds, documented by the media type and not as headers.
FRAMING_HEADERS = {"content-type", "content-length"}
# Response fields whose value differs with the key and the clock.
TOKEN_FIELDS = ("token", "participant_token")
# What an Example Object in this document may hold; x-* are this document's replay instructions.
EXAMPLE_KEYS = {
    "summary",
    "description",
    "value",
    "x-status",
    "x-request-headers",
    "x-authorization",
}
AUTHORIZATION_MODES = ("sign-this-body", "sign-another-body", "absent")
SERVER_SOURCE = (Path(__file__).resolve().parent.parent / "server.py").read_text(encoding="utf-8")
# Every status server.py answers with: the app's HTTPError(...) and `return 2xx, ...`, the runner's _Refusal(...).
SERVER_STATUSES = {
    int(s)
    for s in re.findall(
        r"(?:HTTPError\(\s*|_Refusal\(|return \(?\s*)([1-5][0-9][0-9])\b", SERVER_SOURCE
    )
}


# --------------------------------------------------------------------------
# A JSON Schema validator for the subset openapi.json uses


class SchemaError(Exception):
    """The document's schema is outside what the validator knows, or is malformed."""


KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "const",
        "oneOf",
        "items",
        "$ref",
    }
)
ANNOTATIONS = frozenset({"title", "description"})
TYPES = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def resolve(ref: str, doc: dict = DOC):
    """The value a local reference ("#/a/b") points at."""
    if not ref.startswith("#/"):
        raise SchemaError(f"only local references are supported: {ref}")
    value = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if type(value) is not dict or part not in value:
            raise SchemaError(f"unresolvable reference {ref}")
        value = value[part]
    return value


def deref(value, doc: dict = DOC):
    """A Reference Object followed to what it refers to (OpenAPI objects, not schemas)."""
    while type(value) is dict and "$ref" in value:
        value = resolve(value["$ref"], doc)
    return value


def _same(a, b) -> bool:
    # JSON equality: true is not 1, key order does not matter.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_schema(schema, where: str = "schema", doc: dict = DOC) -> None:
    """Refuse a schema with a keyword outside the subset, or a malformed one."""
    if type(schema) is bool:
        return
    if type(schema) is not dict:
        raise SchemaError(f"{where}: a schema must be an object or a boolean")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise SchemaError(f"{where}: unsupported keywords {sorted(unknown)}")
    if "$ref" in schema:
        if not schema["$ref"].startswith("#/components/schemas/"):
            raise SchemaError(f"{where}: $ref must point into #/components/schemas")
        resolve(schema["$ref"], doc)
    if "type" in schema and schema["type"] not in TYPES:
        raise SchemaError(f"{where}: unknown type {schema['type']!r}")
    for key in ("minLength", "maxLength", "minProperties"):
        if key in schema and (type(schema[key]) is not int or schema[key] < 0):
            raise SchemaError(f"{where}: {key} must be a non-negative integer")
    if "pattern" in schema:
        re.compile(schema["pattern"])
    if "enum" in schema and (type(schema["enum"]) is not list or not schema["enum"]):
        raise SchemaError(f"{where}: enum must be a non-empty list")
    if "required" in schema:
        required = schema["required"]
        if type(required) is not list or not all(type(name) is str for name in required):
            raise SchemaError(f"{where}: required must be a list of names")
        if schema.get("additionalProperties") is False and not set(required) <= set(
            schema.get("properties", {})
        ):
            raise SchemaError(
                f"{where}: a required property is not allowed by additionalProperties: false"
            )
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{where}.properties.{name}", doc)
    if "additionalProperties" in schema:
        check_schema(schema["additionalProperties"], f"{where}.additionalProperties", doc)
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items", doc)
    if "oneOf" in schema:
        if type(schema["oneOf"]) is not list or len(schema["oneOf"]) < 2:
            raise SchemaError(f"{where}: oneOf needs at least two schemas")
        for i, sub in enumerate(schema["oneOf"]):
            check_schema(sub, f"{where}.oneOf[{i}]", doc)


def schema_errors(instance, schema, where: str = "$", doc: dict = DOC) -> list:
    """Where `instance` breaks `schema`; [] when it is valid. Raises SchemaError for unknown keywords."""
    if schema is True:
        return []
    if schema is False:
        return [f"{where}: no value is allowed here"]
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise SchemaError(f"unsupported keywords {sorted(unknown)}")
    found = []
    if "$ref" in schema:
        found += schema_errors(instance, resolve(schema["$ref"], doc), where, doc)
    if "type" in schema and not TYPES[schema["type"]](instance):
        return found + [f"{where}: not of type {schema['type']}"]
    if "const" in schema and not _same(instance, schema["const"]):
        found.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, option) for option in schema["enum"]):
        found.append(f"{where}: not one of {schema['enum']!r}")
    if type(instance) is str:
        if "minLength" in schema and len(instance) < schema["minLength"]:
            found.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            found.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            found.append(f"{where}: does not match {schema['pattern']}")
    if type(instance) is dict:
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in instance:
                found.append(f"{where}: {name} is required")
        if "minProperties" in schema and len(instance) < schema["minProperties"]:
            found.append(f"{where}: fewer than {schema['minProperties']} properties")
        for name, value in instance.items():
            if name in properties:
                found += schema_errors(value, properties[name], f"{where}.{name}", doc)
            elif "additionalProperties" in schema:
                found += schema_errors(
                    value, schema["additionalProperties"], f"{where}.{name}", doc
                )
    if type(instance) is list and "items" in schema:
        for i, item in enumerate(instance):
            found += schema_errors(item, schema["items"], f"{where}[{i}]", doc)
    if "oneOf" in schema:
        matches = sum(not schema_errors(instance, sub, where, doc) for sub in schema["oneOf"])
        if matches != 1:
            found.append(f"{where}: matches {matches} of the oneOf schemas, not exactly one")
    return found


# --------------------------------------------------------------------------
# Walking the document


def operations():
    """(path, method, operation) for every operation in the document."""
    for path, item in DOC["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method.upper(), item[method]


def all_schemas():
    """(where, schema) for every schema in the document: components and each "schema" field."""
    for name, schema in DOC["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", schema

    def walk(value, where):
        if type(value) is dict:
            for key, sub in value.items():
                if key == "schema":
                    yield f"{where}/schema", sub
                elif key != "value" and not (where == "#/components" and key == "schemas"):
                    yield from walk(sub, f"{where}/{key}")
        elif type(value) is list:
            for i, sub in enumerate(value):
                yield from walk(sub, f"{where}/{i}")

    yield from walk(DOC, "#")


def all_refs(value=DOC, where="#"):
    if type(value) is dict:
        if "$ref" in value:
            yield where, value["$ref"]
        for key, sub in value.items():
            if key != "value":
                yield from all_refs(sub, f"{where}/{key}")
    elif type(value) is list:
        for i, sub in enumerate(value):
            yield from all_refs(sub, f"{where}/{i}")


def all_example_objects():
    """(kind, where, example, schema) for every Example Object, with the schema it illustrates.

    kind: "response", "request" (a request body), "parameter" or "header".
    """

    def from_examples(kind, holder, schema, where):
        for name, example in holder.get("examples", {}).items():
            yield kind, f"{where}/examples/{name}", deref(example), schema

    def from_content(kind, content, where):
        for media_type, media in content.items():
            yield from from_examples(
                kind, media, media.get("schema"), f"{where}/content/{media_type}"
            )

    def from_response(response, where):
        yield from from_content("response", response.get("content", {}), where)
        for header_name, header in response.get("headers", {}).items():
            if "$ref" not in header:
                yield from from_examples(
                    "header", header, header["schema"], f"{where}/headers/{header_name}"
                )

    for name, response in DOC["components"]["responses"].items():
        yield from from_response(response, f"#/components/responses/{name}")
    for name, header in DOC["components"]["headers"].items():
        yield from from_examples("header", header, header["schema"], f"#/components/headers/{name}")
    for name, body in DOC["components"]["requestBodies"].items():
        yield from from_content("request", body["content"], f"#/components/requestBodies/{name}")
    for path, method, operation in operations():
        where = f"{method} {path}"
        body = operation.get("requestBody", {})
        if "$ref" not in body:
            yield from from_content("request", body.get("content", {}), where)
        for parameter in operation.get("parameters", ()):
            parameter = deref(parameter)
            yield from from_examples(
                "parameter", parameter, parameter["schema"], f"{where}/{parameter['name']}"
            )
        for status, response in operation["responses"].items():
            if "$ref" not in response:
                yield from from_response(response, f"{where}/{status}")


# --------------------------------------------------------------------------
# Replaying examples


def webhook_authorization(body: bytes) -> str:
    return helpers.webhook_authorization(API_KEY, API_SECRET, body, now=FIXED_NOW, ttl=5 * 60)


# Where server.py does not do what the README and openapi.json say. Strict: once
# the server is fixed, the test passes, fails as XPASS, and the entry must go.
# (method, path) -> pytest mark, for a documented behaviour the server does not have yet.
KNOWN_DISAGREEMENTS: dict = {}


def replays():
    """Every request the document describes, as pytest params of
    (method, path, body bytes or None, request headers, expected status or None, name or None, response or None).

    `response` is given for requests outside the operations; otherwise the
    operation's documented response for the status is used.
    """
    found = []
    for path, method, operation in operations():
        request_body = deref(operation.get("requestBody", {}))
        parameter_examples: dict = {}
        for parameter in operation.get("parameters", ()):
            parameter = deref(parameter)
            assert parameter["in"] == "header", parameter
            for name, example in parameter.get("examples", {}).items():
                parameter_examples.setdefault(name, []).append((parameter["name"], deref(example)))
        for media_type, media in request_body.get("content", {}).items():
            for name, example in media.get("examples", {}).items():
                example = deref(example)
                body = json.dumps(example["value"]).encode()
                headers = {"Content-Type": media_type}
                mode = example.get("x-authorization")
                if mode is not None:
                    assert mode in AUTHORIZATION_MODES, (name, mode)
                    if mode == "sign-this-body":
                        headers["Authorization"] = webhook_authorization(body)
                    elif mode == "sign-another-body":
                        headers["Authorization"] = webhook_authorization(body + b" ")
                headers.update(example.get("x-request-headers", {}))
                found.append(
                    pytest.param(
                        method,
                        path,
                        body,
                        headers,
                        example["x-status"],
                        name,
                        None,
                        id=f"{method} {path} {name}",
                    )
                )
        for name, pairs in parameter_examples.items():
            statuses = {example["x-status"] for _, example in pairs}
            assert len(statuses) == 1, (path, name, statuses)
            headers = {header: example["value"] for header, example in pairs}
            found.append(
                pytest.param(
                    method,
                    path,
                    None,
                    headers,
                    statuses.pop(),
                    name,
                    None,
                    id=f"{method} {path} {name}",
                )
            )
        if not request_body and not parameter_examples:
            marks = KNOWN_DISAGREEMENTS.get((method, path), ())
            found.append(
                pytest.param(
                    method, path, None, {}, None, None, None, id=f"{method} {path}", marks=marks
                )
            )
    for name, request in DOC["x-requests-outside-operations"].items():
        found.append(
            pytest.param(
                request["method"],
                request["path"],
                None,
                {},
                request["x-status"],
                name,
                request["response"],
                id=f"{request['method']} {request['path']} {name}",
            )
        )
    return found


REPLAYS = replays()


def call(app, method: str, path: str, body, headers: dict) -> tuple:
    """One request through wsgiref's validator: (status, headers as (name, value) pairs, body)."""
    environ = environ_for(method, path, io.BytesIO(body or b""))
    if body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    response = run_app(app, environ)
    return response.status, response.headers, response.body


def app_for(cors: str):
    allowed = frozenset({ORIGIN}) if cors == "listed" else frozenset({"*"})
    settings = server.Settings(api_key=API_KEY, api_secret=API_SECRET, allowed_origins=allowed)
    return server.make_app(settings, clock=lambda: FIXED_NOW)


def without_tokens(value):
    if type(value) is dict:
        return {key: "<token>" if key in TOKEN_FIELDS else item for key, item in value.items()}
    return value


def check_headers(response_doc: dict, headers: list, where: str) -> None:
    got = {}
    for name, value in headers:
        assert name.lower() not in got, f"{where}: repeated header {name}"
        got[name.lower()] = value
    documented = {
        name.lower(): deref(header) for name, header in response_doc.get("headers", {}).items()
    }
    for name, header in documented.items():
        if header.get("required"):
            assert name in got, f"{where}: documented header {name} is missing"
        if name in got:
            assert not schema_errors(got[name], header["schema"]), (
                f"{where}: header {name}: {got[name]!r}"
            )
    undocumented = set(got) - set(documented) - FRAMING_HEADERS
    assert not undocumented, f"{where}: undocumented headers {sorted(undocumented)}"


# --------------------------------------------------------------------------
# (a) The document, and its paths and methods against the server's routes


def test_document_is_openapi_3_1_json():
    assert DOC["openapi"] == "3.1.0"
    assert {"title", "version", "description"} <= set(DOC["info"])
    # The file is plain JSON that re-reads to the same value (no NaN, no duplicate keys).
    text = DOC_PATH.read_text(encoding="utf-8")

    def no_duplicates(pairs):
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), keys
        return dict(pairs)

    def no_constant(name):
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant) == DOC


def test_paths_and_methods_are_the_server_routes_plus_options():
    documented = {
        path: {method for p, method, _ in operations() if p == path} for path in DOC["paths"]
    }
    routes = {path: set(methods) | {"OPTIONS"} for path, (methods, _) in server.ROUTES.items()}
    assert documented == routes
    for path, item in DOC["paths"].items():
        assert set(item) <= set(HTTP_METHODS) | {"summary", "description", "parameters"}, path


def test_operations_are_well_formed():
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations():
        assert operation["responses"], (method, path)
        for status in operation["responses"]:
            # Explicit statuses only (no "default", no "4XX"), each one the server can send.
            assert int(status) in SERVER_STATUSES, (method, path, status)
        body = deref(operation.get("requestBody", {}))
        if method in ("GET", "HEAD", "OPTIONS"):
            assert not body, (method, path)
        for scheme in (
            name for requirement in operation.get("security", ()) for name in requirement
        ):
            assert scheme in DOC["components"]["securitySchemes"]
    for name, request in DOC["x-requests-outside-operations"].items():
        assert request["method"].lower() not in DOC["paths"].get(request["path"], {}), name


def test_the_status_list_is_read_from_server_py():
    # The regular expression above must find what server.py answers with, or the check above is empty.
    assert {
        200,
        201,
        204,
        400,
        401,
        403,
        404,
        405,
        408,
        411,
        413,
        415,
        429,
        431,
        500,
        503,
        505,
    } <= SERVER_STATUSES
    assert SERVER_STATUSES <= {status.value for status in http.HTTPStatus}


def test_metrics_is_not_a_path_and_the_spec_shows_its_404():
    assert "/metrics" not in DOC["paths"] and "/metrics" not in server.ROUTES
    assert DOC["x-requests-outside-operations"]["metrics-404"]["x-status"] == 404


def test_every_reference_resolves():
    refs = list(all_refs())
    assert refs
    for where, ref in refs:
        resolve(ref)  # raises SchemaError


def test_every_schema_uses_only_the_supported_keywords():
    schemas = list(all_schemas())
    assert len(schemas) > 20
    for where, schema in schemas:
        check_schema(schema, where)


def test_the_named_examples_exist():
    names = {where.rsplit("/", 1)[1] for _, where, _, _ in all_example_objects()} | set(
        DOC["x-requests-outside-operations"]
    )
    for name in (
        "openvidu-token",
        "standard-token",
        "missing-fields-400",
        "wrong-content-type-415",
        "unknown-path-404",
        "preflight-204",
        "webhook-ok",
    ):
        assert name in names


def test_token_request_shapes_are_told_apart_as_the_server_does():
    schema = {"$ref": "#/components/schemas/TokenRequest"}
    openvidu, standard = (resolve(branch["$ref"]) for branch in resolve(schema["$ref"])["oneOf"])
    snake_case = set(server.STANDARD_FIELDS)
    # The standard shape is exactly LiveKit's fields; the OpenVidu shape forbids them.
    assert set(standard["properties"]) == snake_case
    assert {name for name, sub in openvidu["properties"].items() if sub is False} == snake_case
    assert set(openvidu["required"]) == set(server.OPENVIDU_FIELDS)
    assert not schema_errors({"roomName": "r", "participantName": "p"}, schema)
    assert not schema_errors({"room_name": "r"}, schema)
    assert schema_errors({}, schema)
    assert schema_errors({"roomName": "r", "participantName": "p", "room_name": "r"}, schema)


# --------------------------------------------------------------------------
# (b) Replaying every request example against the application


@pytest.mark.parametrize("cors", ["any-origin", "listed"])
@pytest.mark.parametrize("method,path,body,headers,expected,name,response_ref", REPLAYS)
def test_replayed_example_gets_a_documented_answer(
    method, path, body, headers, expected, name, response_ref, cors
):
    headers = dict(headers)
    if cors == "listed":
        headers.setdefault("Origin", ORIGIN)
        assert headers["Origin"] == ORIGIN
    status, response_headers, response_body = call(app_for(cors), method, path, body, headers)
    where = f"{method} {path} {name}: {status}"

    if expected is not None:
        assert status == expected, (where, response_body)
    if response_ref is None:
        responses = DOC["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{where} is not documented"
        response_doc = deref(responses[str(status)])
    else:
        response_doc = deref(response_ref)
    if expected is None:
        assert 200 <= status < 300, where

    check_headers(response_doc, response_headers, where)
    got = {key.lower(): value for key, value in response_headers}
    if "Access-Control-Allow-Origin" in response_doc.get("headers", {}):
        assert got.get("access-control-allow-origin") == (ORIGIN if cors == "listed" else "*"), (
            where
        )

    content = response_doc.get("content")
    if not content:
        assert response_body == b"", where
        return
    assert status != 204 and method != "HEAD", where
    content_type = got["content-type"]
    media = content.get(content_type) or content[content_type.split(";")[0].strip()]
    if content_type.startswith("application/json"):
        value = json.loads(response_body)
    else:
        value = response_body.decode("utf-8")
    assert not schema_errors(value, media["schema"]), (
        where,
        schema_errors(value, media["schema"]),
        value,
    )
    if name is not None:
        examples = media.get("examples", {})
        assert name in examples, f"{where}: no response example named {name}"
        assert without_tokens(value) == without_tokens(deref(examples[name])["value"]), where


def test_an_unlisted_origin_gets_no_allow_origin():
    # The one documented exception to Access-Control-Allow-Origin being sent: the browser hides the answer.
    request = json.dumps({"roomName": "Test Room", "participantName": "Participant42"}).encode()
    status, headers, _ = call(
        app_for("listed"),
        "POST",
        "/token",
        request,
        {"Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    assert status == 200
    names = {name.lower(): value for name, value in headers}
    assert "access-control-allow-origin" not in names
    assert names["vary"] == "Origin"


def test_request_examples_agree_with_the_request_schema():
    """A 2xx example is a valid request; a 400 example is one the schema refuses too."""
    checked = 0
    for path, method, operation in operations():
        body = deref(operation.get("requestBody", {}))
        for media in body.get("content", {}).values():
            for name, example in media.get("examples", {}).items():
                example = deref(example)
                problems = schema_errors(example["value"], media["schema"])
                if 200 <= example["x-status"] < 300:
                    assert not problems, (method, path, name, problems)
                elif example["x-status"] == 400:
                    assert problems, (method, path, name)
                checked += 1
    assert checked >= 10


# --------------------------------------------------------------------------
# (c) Every example against its own schema


def test_every_example_validates_against_its_schema():
    """Response, header and parameter examples against their schemas.

    Request body examples are checked against the request schema above: the
    ones the server refuses with a 400 are meant not to validate.
    """
    examples = list(all_example_objects())
    assert {kind for kind, _, _, _ in examples} >= {"response", "request", "parameter"}
    assert sum(kind == "response" for kind, _, _, _ in examples) > 30
    statuses = {status for _, _, operation in operations() for status in operation["responses"]}
    for kind, where, example, schema in examples:
        assert set(example) <= EXAMPLE_KEYS, (where, sorted(set(example) - EXAMPLE_KEYS))
        assert "value" in example and schema is not None, where
        if kind in ("request", "parameter"):
            assert str(example["x-status"]) in statuses, where
        else:
            assert not {"x-status", "x-request-headers", "x-authorization"} & set(example), where
        if kind != "request":
            problems = schema_errors(example["value"], schema)
            assert not problems, (where, problems)


# --------------------------------------------------------------------------
# (d) The name patterns against the server's own check


NAME_SCHEMAS = {
    "RoomName": "#/components/schemas/RoomName",
    "Identity": "#/components/schemas/Identity",
    "room_name": "#/components/schemas/StandardTokenRequest/properties/room_name",
    "participant_identity": "#/components/schemas/StandardTokenRequest/properties/participant_identity",
    "participant_name": "#/components/schemas/StandardTokenRequest/properties/participant_name",
}


POLICY = server.TokenPolicy(
    server.Settings(api_key=API_KEY, api_secret=API_SECRET), clock=lambda: FIXED_NOW
)


def _server_refuses(text: str, identifier: bool) -> bool:
    try:
        POLICY.check_name(text, "name", identifier=identifier)
    except server.HTTPError as err:
        assert err.status == 400 and "must not contain" in err.message, err.message
        return True
    return False


@pytest.mark.parametrize("name", list(NAME_SCHEMAS))
def test_name_patterns_refuse_exactly_what_the_server_refuses(name):
    pattern = re.compile(resolve(NAME_SCHEMAS[name])["pattern"])
    identifier = name != "participant_name"  # a display name, checked by the display rules
    differ = [
        f"U+{code:04X}"
        for code in range(0x10000)
        if not 0xD800
        <= code
        <= 0xDFFF  # surrogates: no JSON text holds one alone ("has an unpaired surrogate")
        and (pattern.search("a" + chr(code) + "b") is None)
        != _server_refuses("a" + chr(code) + "b", identifier)
    ]
    assert differ == [], differ[:20]


# --------------------------------------------------------------------------
# The validator refuses what it should (so it cannot be a no-op)

TOKEN_REQUEST = {"$ref": "#/components/schemas/TokenRequest"}
INVALID = [
    ({"type": "string"}, 5),
    ({"type": "integer"}, True),
    ({"type": "integer"}, 1.5),
    ({"type": "object"}, []),
    ({"type": "array"}, {}),
    ({"type": "null"}, 0),
    ({"required": ["a"]}, {"b": 1}),
    ({"properties": {"a": {"type": "string"}}}, {"a": 1}),
    ({"additionalProperties": False, "properties": {"a": True}}, {"a": 1, "b": 2}),
    ({"additionalProperties": {"type": "string"}}, {"b": 2}),
    ({"minProperties": 1}, {}),
    ({"minLength": 2}, "a"),
    ({"maxLength": 2}, "abc"),
    ({"minLength": 1}, ""),
    ({"pattern": "^[a-z]+$"}, "ab1"),
    ({"enum": ["a", "b"]}, "c"),
    ({"enum": [1]}, True),
    ({"const": "ok"}, "OK"),
    ({"const": 1}, True),
    ({"oneOf": [{"type": "string"}, {"minLength": 1}]}, "x"),  # both match
    ({"oneOf": [{"type": "string"}, {"type": "null"}]}, 1),  # none matches
    ({"items": {"type": "string"}}, ["a", 1]),
    ({"properties": {"a": False}}, {"a": None}),
    (False, None),
    ({"$ref": "#/components/schemas/Error"}, {"errorMessage": ""}),
    ({"$ref": "#/components/schemas/Error"}, {"errorMessage": "x", "detail": "y"}),
    ({"$ref": "#/components/schemas/Error"}, {"errorMessage": 5}),
    ({"$ref": "#/components/schemas/OpenViduTokenResponse"}, {"token": "a.b.c", "extra": 1}),
    ({"$ref": "#/components/schemas/OpenViduTokenResponse"}, {"token": "not a jwt"}),
    ({"$ref": "#/components/schemas/OpenViduTokenResponse"}, {}),
    ({"$ref": "#/components/schemas/StandardTokenResponse"}, {"participant_token": "a.b.c"}),
    ({"$ref": "#/components/schemas/Status"}, {"status": "fine"}),
    ({"$ref": "#/components/schemas/WebhookEvent"}, {"event": ""}),
    ({"$ref": "#/components/schemas/WebhookEvent"}, {"event": "room_started", "room": "Test Room"}),
    (TOKEN_REQUEST, {"roomName": "", "participantName": "p"}),
    (TOKEN_REQUEST, {"roomName": "r", "participantName": 42}),
    (TOKEN_REQUEST, {"roomName": "r" * 257, "participantName": "p"}),
    (TOKEN_REQUEST, {"roomName": "r\u0085", "participantName": "p"}),
    (TOKEN_REQUEST, {"room_name": "r", "participantName": "p"}),
    (TOKEN_REQUEST, {"room_name": "r", "participant_attributes": {"a": 1}}),
    (TOKEN_REQUEST, {"room_name": "r", "room_config": []}),
    (TOKEN_REQUEST, {"room_name": "r", "agent": "x"}),
    (TOKEN_REQUEST, []),
]
VALID = [
    ({"type": "integer"}, 3),
    ({"type": "number"}, 1.5),
    ({"additionalProperties": False, "properties": {"a": True}}, {"a": 1}),
    ({"oneOf": [{"type": "string"}, {"type": "null"}]}, None),
    ({"enum": ["a", "b"]}, "b"),
    ({"pattern": "b"}, "abc"),  # pattern is a search, as in JSON Schema
    ({"maxLength": 1}, "\U0001f600"),  # characters, not UTF-16 units or bytes
    (True, {"anything": [1]}),
    (TOKEN_REQUEST, {"roomName": "Test Room", "participantName": "Participant42", "other": 1}),
    (TOKEN_REQUEST, {"room_name": "", "room_config": {"agents": [{"agent_name": "my-agent"}]}}),
]


@pytest.mark.parametrize(
    "schema,instance", INVALID, ids=[f"invalid-{i}" for i in range(len(INVALID))]
)
def test_validator_rejects(schema, instance):
    assert schema_errors(instance, schema)


@pytest.mark.parametrize("schema,instance", VALID, ids=[f"valid-{i}" for i in range(len(VALID))])
def test_validator_accepts(schema, instance):
    assert schema_errors(instance, schema) == []


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "uri"},
        {"maxItems": 1},
        {"anyOf": [{"type": "string"}]},
        {"properties": {"a": {"type": "string", "minimum": 1}}},
        {"type": "text"},
        {"$ref": "#/components/schemas/Nothing"},
        {"$ref": "https://example.com/schema.json"},
        {"oneOf": [{"type": "string"}]},
        {"required": ["b"], "additionalProperties": False, "properties": {"a": True}},
    ],
)
def test_validator_refuses_schemas_outside_the_subset(schema):
    with pytest.raises(SchemaError):
        check_schema(schema)
    if set(schema) - KEYWORDS:
        with pytest.raises(SchemaError):
            schema_errors("x", schema)
