"""Discovery, liveness, the shared-secret check and refusals before dispatch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import Protocol, make_settings
from gateway import create_app
from gateway.settings import Settings, SettingsError


@pytest.mark.parametrize("path", ["/liveness", "/v1/liveness"])
def test_liveness(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_commands_catalog_matches_the_protocol(client: TestClient, protocol: Protocol) -> None:
    response = client.get("/v1/commands")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    catalog = response.json()
    protocol.validate(catalog, "CommandCatalog")
    ids = [entry["id"] for entry in catalog]
    assert ids == sorted(ids)
    echo = next(entry for entry in catalog if entry["id"] == "fake/Echo")
    assert echo == {
        "id": "fake/Echo",
        "description": "Answers with the payload it read.",
        "parameters": [
            {"id": "text", "type": "str", "required": True, "description": "Any text."},
            {"id": "count", "type": "int", "required": False, "default": 1},
            {"id": "loud", "type": "bool", "required": False},
            {"id": "extra", "type": "any", "required": False},
        ],
    }


def test_auths_catalog_matches_the_protocol(client: TestClient, protocol: Protocol) -> None:
    catalog = client.get("/v1/auths").json()

    protocol.validate(catalog, "CommandCatalog")
    assert catalog == [
        {
            "id": "fake/OAuth",
            "description": "A handler that is declared but has no browser flow.",
            "parameters": [{"id": "client_id", "type": "str", "required": True}],
        }
    ]


def test_auth_route_explains_it_is_not_supported_yet(client: TestClient) -> None:
    response = client.get("/v1/auth/fake/OAuth", params={"redirect_url": "http://127.0.0.1/cb?token=x"})

    assert response.status_code == 501
    assert response.headers["content-type"].startswith("text/html")
    assert "Sign-in not supported yet" in response.text
    assert "fake/OAuth" in response.text


def test_auth_route_for_an_unknown_handler(client: TestClient) -> None:
    response = client.get("/v1/auth/fake/Nope")

    assert response.status_code == 404
    assert "No handler &#x27;fake/Nope&#x27; is declared here." in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/do/fake/Nope",
        "/v1/do/nope/Echo",
        "/v1/do/fake",
        "/v1/do/fake/Echo/extra",
        "/v1/do/a%2Fb/Echo",
        "/v1/do/fake%2FEcho",
        "/v1/do/",
    ],
)
def test_unknown_command_is_a_404_in_the_protocol_shape(client: TestClient, protocol: Protocol, path: str) -> None:
    response = client.post(path, json={})

    assert response.status_code == 404
    answer = response.json()
    protocol.validate_answer(404, answer)
    assert answer["error"]["error_code"] == "command_not_found"
    assert answer["error"]["message"].endswith("is served here; GET /v1/commands lists the commands.")


def test_unknown_command_message_names_it(client: TestClient) -> None:
    answer = client.post("/v1/do/fake/Nope", json={}).json()

    assert answer == {
        "command_response": {},
        "error": {
            "error_code": "command_not_found",
            "message": "No command 'fake/Nope' is served here; GET /v1/commands lists the commands.",
        },
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "The request body must be a JSON object of parameters, got an array."),
        (b'"text"', "The request body must be a JSON object of parameters, got a string."),
        (b"null", "The request body must be a JSON object of parameters, got null."),
        (b"3", "The request body must be a JSON object of parameters, got a number."),
        (b'{"a": NaN}', "The request body is not valid JSON: NaN is not a JSON value."),
        (b'{"a": -Infinity}', "The request body is not valid JSON: -Infinity is not a JSON value."),
        (
            b'{"text": "a", "extra": 1e400}',
            "The request body holds a number too large for a double-precision float (such as 1e400).",
        ),
        (b'{"text": "x"', "The request body is not valid JSON: Expecting ',' delimiter: line 1 column 13 (char 12)."),
        (b"", "The request body is not valid JSON: Expecting value: line 1 column 1 (char 0)."),
        (b'{"a": "\xff"}', "The request body is not UTF-8 text (invalid byte at position 7)."),
        (b"[" * 100_000 + b"]" * 100_000, "The request body is nested too deeply."),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(
    client: TestClient, protocol: Protocol, content: bytes, message: str
) -> None:
    response = client.post("/v1/do/fake/Echo", content=content, headers={"content-type": "application/json"})

    assert response.status_code == 400
    protocol.validate_answer(400, response.json())
    assert response.json()["error"] == {"error_code": "invalid_body", "message": message}


def test_a_body_over_the_limit_is_a_413(protocol: Protocol) -> None:
    app = create_app(make_settings(max_body_bytes=1000))
    with TestClient(app) as client:
        json_type = {"content-type": "application/json"}
        declared = client.post("/v1/do/fake/Echo", content=json.dumps({"text": "x" * 2000}), headers=json_type)

        def chunks():  # no content-length: the limit holds on the stream too
            yield b'{"text": "'
            yield b"x" * 2000
            yield b'"}'

        streamed = client.post("/v1/do/fake/Echo", content=chunks(), headers=json_type)

    for response in (declared, streamed):
        assert response.status_code == 413
        protocol.validate_answer(413, response.json())
        assert response.json()["error"] == {
            "error_code": "body_too_large",
            "message": "The request body is larger than the gateway's limit of 1000 bytes.",
        }


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "message"),
    [
        ("GET", "/v1/do/fake/Echo", 405, "method_not_allowed", "Method Not Allowed"),
        ("POST", "/v1/commands", 405, "method_not_allowed", "Method Not Allowed"),
        ("POST", "/v1/do", 404, "not_found", "Not Found"),
        ("GET", "/v2/commands", 404, "not_found", "Not Found"),
    ],
)
def test_a_route_that_does_not_exist_answers_in_the_protocol_shape(
    client: TestClient, protocol: Protocol, method: str, path: str, status: int, code: str, message: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == status
    protocol.validate_answer(status, response.json())
    assert response.json()["error"] == {"error_code": code, "message": message}


class TestApiKey:
    KEY = "k3y-from-arena"

    @pytest.fixture
    def keyed(self) -> TestClient:
        return TestClient(create_app(make_settings(api_key=self.KEY)))

    @pytest.mark.parametrize(
        ("method", "path"), [("GET", "/v1/commands"), ("GET", "/v1/auths"), ("POST", "/v1/do/fake/Echo")]
    )
    def test_gated_routes_need_the_key(self, keyed: TestClient, protocol: Protocol, method: str, path: str) -> None:
        for headers in ({}, {"Spiff-Connector-Proxy-Api-Key": "wrong"}, {"Spiff-Connector-Proxy-Api-Key": ""}):
            response = keyed.request(method, path, headers=headers, json={"text": "x"})
            assert response.status_code == 401
            assert response.json() == {"error": "Unauthorized"}
            protocol.validate_answer(401, response.json())

        allowed = keyed.request(method, path, headers={"Spiff-Connector-Proxy-Api-Key": self.KEY}, json={"text": "x"})
        assert allowed.status_code == 200

    def test_a_repeated_key_header_is_refused(self, keyed: TestClient) -> None:
        headers = [("Spiff-Connector-Proxy-Api-Key", self.KEY), ("Spiff-Connector-Proxy-Api-Key", self.KEY)]

        assert keyed.get("/v1/commands", headers=headers).status_code == 401

    @pytest.mark.parametrize("path", ["/liveness", "/v1/liveness"])
    def test_liveness_is_never_gated(self, keyed: TestClient, path: str) -> None:
        assert keyed.get(path).status_code == 200

    def test_options_is_never_gated(self, keyed: TestClient) -> None:
        assert keyed.options("/v1/commands").status_code != 401

    def test_the_browser_auth_route_is_not_gated(self, keyed: TestClient) -> None:
        assert keyed.get("/v1/auth/fake/OAuth").status_code == 501

    @pytest.mark.parametrize(
        ("method", "path"), [("GET", "/v1/commands"), ("GET", "/v1/auths"), ("POST", "/v1/do/fake/Echo")]
    )
    def test_arena_routes_take_the_key_only_in_its_header(self, keyed: TestClient, method: str, path: str) -> None:
        basic = keyed.request(method, path, auth=("anyone", self.KEY), json={"text": "x"})

        assert basic.status_code == 401
        assert basic.json() == {"error": "Unauthorized"}
        assert "www-authenticate" not in basic.headers  # no browser prompt: these routes are for Arena

    @pytest.mark.parametrize("path", ["/", "/openapi.json"])
    def test_the_browsers_pages_take_the_key_as_a_basic_password(self, keyed: TestClient, path: str) -> None:
        assert keyed.get(path, auth=("anyone", self.KEY)).status_code == 200
        assert keyed.get(path, auth=("anyone", "wrong")).status_code == 401

    @pytest.mark.parametrize(
        "browser_headers",
        [
            {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "http://testserver"},  # plain http beyond loopback: browsers send no Sec-Fetch-* there
        ],
    )
    def test_the_status_page_form_runs_with_the_browsers_basic_password(
        self, keyed: TestClient, browser_headers: dict[str, str]
    ) -> None:
        response = keyed.post(
            "/v1/do/fake/Echo", auth=("anyone", self.KEY), json={"text": "x"}, headers=browser_headers
        )

        assert response.status_code == 200
        assert response.json()["command_response"]["body"] == {"text": "x", "count": 1}

    @pytest.mark.parametrize("site", ["cross-site", "same-site", "none"])
    def test_another_sites_page_cannot_run_a_command_with_the_browsers_password(
        self, keyed: TestClient, site: str
    ) -> None:
        headers = {"Origin": "http://elsewhere.example", "Sec-Fetch-Site": site}

        response = keyed.post("/v1/do/fake/Echo", auth=("anyone", self.KEY), json={"text": "x"}, headers=headers)

        assert response.status_code == 401

    @pytest.mark.parametrize("key", [" k3y", "k3y ", "k3y\t", "\tk3y\n"])
    def test_a_key_with_whitespace_around_it_is_refused_at_start_up(self, key: str) -> None:
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"CONNECTOR_PROXY_API_KEY": key})

        assert str(refused.value) == (
            "CONNECTOR_PROXY_API_KEY begins or ends with whitespace, which HTTP strips from header values: "
            "no request could ever match it. Remove the whitespace, here and in Arena's setting."
        )


def test_a_bad_manifest_is_skipped_and_the_others_served(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(
        "manifest_version: 1\nconnector: good\ncommands:\n  - {name: Run, run: ['{python}', '-c', 'print(1)']}\n"
    )
    (tmp_path / "bad.yaml").write_text("manifest_version: 1\nconnector: bad\ncommands:\n  - {name: Run}\n")

    with TestClient(create_app(make_settings(manifest_dirs=(tmp_path,)))) as client:
        assert [entry["id"] for entry in client.get("/v1/commands").json()] == ["good/Run"]
        assert client.post("/v1/do/good/Run", json={}).json()["command_response"]["body"] == 1


@pytest.mark.parametrize(("method", "path", "broken_part"), [
    ("POST", "/v1/do/fake/Echo", "gateway.dispatch.prepare_payload"),
    ("GET", "/", "gateway.app.render_page"),
])  # fmt: skip
def test_an_unexpected_fault_still_answers_in_the_protocol_shape(
    protocol: Protocol,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    broken_part: str,
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO, logger="gateway.access")
    monkeypatch.setattr(broken_part, broken)
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        response = client.request(method, path, json={"text": "x"})

    assert response.status_code == 500
    answer = response.json()
    protocol.validate_answer(500, answer)
    request_id = response.headers["x-request-id"]
    assert answer["error"] == {
        "error_code": "internal_error",
        "message": f"The gateway failed unexpectedly; its log has the details under request id {request_id}.",
    }
    (line,) = [record.getMessage() for record in caplog.records if record.name == "gateway.access"]
    assert line.startswith(f"{request_id} {method} {path} 500 ")
    assert " error=internal_error " in line
