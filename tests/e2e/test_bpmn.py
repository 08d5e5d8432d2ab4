"""Real BPMN diagrams run by SpiffWorkflow with Arena's service task against the gateway under uvicorn.

Each scenario reaches one of the contract's judging rules and checks where the process instance
ended, what the result or caught error holds, and how Arena judged the call. Rule 5 (outer 202:
the task waits for a callback) has no scenario: the gateway has no asynchronous commands yet;
the harness would leave such a task waiting.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.util.task import TaskState

from .arena import BAD_STATUS, INVALID_JSON, Arena, Call, Outcome

if TYPE_CHECKING:
    from .conftest import Gateway, Server

DIAGRAMS = Path(__file__).parent / "diagrams"


def assert_judged(call: Call, outer: int, inner: int | None, rule: int | None, error_code: str | None) -> None:
    """The call's statuses and Arena's verdict; the gateway's answer must match the published schema."""
    assert call.schema_problems == []
    assert (call.outer_status, call.inner_status) == (outer, inner)
    assert (call.verdict.rule, call.verdict.error_code) == (rule, error_code)


def task_id(outcome: Outcome, bpmn_id: str) -> str:
    (task,) = [task for task in outcome.workflow.get_tasks() if task.task_spec.bpmn_id == bpmn_id]
    return str(task.id)


# --- Success -------------------------------------------------------------------------------------


def test_result_of_a_successful_call_is_used_downstream(arena: Arena) -> None:
    outcome = arena.run(DIAGRAMS / "greet_customer.bpmn")

    assert outcome.error is None
    assert outcome.reached() == ["EndGreeted"]
    assert outcome.fired() == []
    assert outcome.data["message"] == "Hello, Ada!"
    assert outcome.data["greeted_by"] == "e2e/Echo"
    result = outcome.data["greet_result"]
    assert {key: value for key, value in result.items() if key != "body"} == {
        "mimetype": "application/json",
        "http_status": 200,
        "headers": {},
        "operator_identifier": "e2e/Echo",
    }
    assert_judged(outcome.call, outer=200, inner=200, rule=None, error_code=None)
    assert outcome.call.verdict.recorded_status == 200
    assert outcome.call.answer["spiff__logs"] == ["greeting 'Ada'"]


def test_connector_receives_what_arena_sent(arena: Arena) -> None:
    outcome = arena.run(DIAGRAMS / "greet_customer.bpmn")

    received = outcome.data["greet_result"]["body"]["received"]
    assert received == outcome.call.sent
    greet_task = task_id(outcome, "Greet")
    assert received == {
        "name": "Ada",
        "count": 3,
        "tags": ["vip", "billing"],
        "spiff__process_instance_id": 1,
        "spiff__process_model_identifier": "e2e/greet_customer",
        "spiff__task_id": greet_task,
        "spiff__task_data": {
            "customer_name": "Ada",
            "visits": 3,
            "tags": ["vip", "billing"],
            "due": {"typename": "datetime", "value": "2026-01-01T09:30:00"},
        },
        "spiff__callback_url": f"http://127.0.0.1:7000/v1.0/tasks/1/{greet_task}/callback",
    }
    assert outcome.data["greet_result"]["body"]["command"] == "e2e/Echo"
    assert outcome.call.headers == {"Content-Type": "application/json", "User-Agent": "spiffworkflow-backend"}


def test_gateway_with_an_api_key_serves_arena_configured_with_it(
    keyed_gateway: Gateway, connect: Callable[..., Arena]
) -> None:
    outcome = connect(keyed_gateway.url, keyed_gateway.api_key).run(DIAGRAMS / "greet_guarded.bpmn")

    assert outcome.reached() == ["EndGreeted"]
    assert outcome.data["greet_result"]["body"]["greeting"] == "Hello, Grace"
    assert outcome.call.headers["Spiff-Connector-Proxy-Api-Key"] == "e2e-shared-secret"
    assert_judged(outcome.call, outer=200, inner=200, rule=None, error_code=None)


# --- Rule 1: the answer is not JSON -------------------------------------------------------------


def test_answer_that_is_not_json_fails_before_its_outer_status_is_read(
    not_a_proxy: Server, connect: Callable[..., Arena]
) -> None:
    outcome = connect(not_a_proxy.url).run(DIAGRAMS / "greet_guarded.bpmn")

    assert outcome.fired() == ["ProxyAnsweredNonJson"]
    assert outcome.reached() == ["EndProxyBroken"]
    assert outcome.data["proxy_error"]["error_code"] == INVALID_JSON
    assert outcome.data["proxy_error"]["message"] == "<html><body><h1>502 Bad Gateway</h1></body></html>"
    assert not_a_proxy.requests == ["POST /v1/do/e2e/Echo"]
    call = outcome.call
    assert (call.outer_status, call.answer) == (502, None)
    assert (call.verdict.rule, call.verdict.error_code, call.verdict.recorded_status) == (1, INVALID_JSON, 502)
    assert call.schema_problems[0] == "Content-Type is 'text/html', not application/json"
    assert call.schema_problems[1].startswith("the body is not JSON")


# --- Rule 2: an error code, caught by a boundary event or failing the task -----------------------


@pytest.mark.parametrize(
    ("mode", "boundary", "end", "code", "inner", "message"),
    [
        pytest.param(
            "fail",
            "OrderFailed",
            "EndOrderFailed",
            "connector_failed",
            502,
            "The connector for 'e2e/Fail' exited with status 3. "
            "Its last stderr lines: The order service refused the request.",
            id="connector_failed",
        ),
        pytest.param(
            "hang",
            "OrderTimedOut",
            "EndOrderTimedOut",
            "connector_timeout",
            504,
            "The connector for 'e2e/Hang' did not finish within its time limit of 1 s and was stopped.",
            id="connector_timeout",
        ),
    ],
)
def test_connector_that_ran_and_failed_is_caught_by_its_boundary_event(
    arena: Arena, mode: str, boundary: str, end: str, code: str, inner: int, message: str
) -> None:
    outcome = arena.run(DIAGRAMS / "place_order.bpmn", {"mode": mode})

    assert outcome.fired() == [boundary]
    assert outcome.reached() == [end]
    assert "order" not in outcome.data
    caught = outcome.data["order_error"]
    assert (caught["error_code"], caught["message"]) == (code, message)
    assert caught["operator_identifier"] == outcome.call.operator
    # Dispatched: outer 200, and a 5xx inner status that Arena records, so its retries may help.
    assert_judged(outcome.call, outer=200, inner=inner, rule=2, error_code=code)
    assert outcome.call.verdict.recorded_status == inner


def test_unknown_command_is_caught_before_its_outer_404_counts(arena: Arena) -> None:
    outcome = arena.run(DIAGRAMS / "archive_invoice.bpmn")

    assert outcome.fired() == ["ArchiveMissing"]
    assert outcome.reached() == ["EndNotArchived"]
    error = {
        "error_code": "command_not_found",
        "message": "No command 'e2e/Archive' is served here; GET /v1/commands lists the commands.",
    }
    assert outcome.call.answer == {"command_response": {}, "error": error}
    assert outcome.data["archive_error"]["message"] == error["message"]
    assert_judged(outcome.call, outer=404, inner=None, rule=2, error_code="command_not_found")
    assert outcome.call.verdict.recorded_status == 404


def test_missing_parameter_fails_the_task_when_nothing_catches_it(arena: Arena) -> None:
    outcome = arena.run(DIAGRAMS / "greet_nickname.bpmn")

    assert isinstance(outcome.error, WorkflowTaskException)
    assert not outcome.completed
    assert outcome.in_state(TaskState.ERROR) == ["Greet"]
    assert outcome.reached() == []
    assert "greet_result" not in outcome.data
    assert outcome.call.sent["name"] is None
    assert outcome.call.verdict.message == "Command 'e2e/Echo' is missing the required parameter 'name'."
    # A caller's mistake: a 4xx status that Arena's retries leave alone.
    assert_judged(outcome.call, outer=400, inner=None, rule=2, error_code="missing_parameter")
    assert outcome.call.verdict.recorded_status == 400


@pytest.mark.skipif(shutil.which("node") is None, reason="the Node example connector needs node on PATH")
@pytest.mark.parametrize(
    ("ticket_id", "boundary", "end"),
    [
        pytest.param(7, [], "EndTicketRead", id="found"),
        pytest.param(999, ["NoSuchTicket"], "EndNoSuchTicket", id="missing"),
    ],
)
def test_node_example_connector_answers_its_own_error_code(
    arena: Arena, upstream: Server, ticket_id: int, boundary: list[str], end: str
) -> None:
    data = {"tickets_url": f"{upstream.url}/api", "ticket_id": ticket_id}
    outcome = arena.run(DIAGRAMS / "read_ticket.bpmn", data)

    assert outcome.fired() == boundary
    assert outcome.reached() == [end]
    assert upstream.requests[-1] == f"GET /api/tickets/{ticket_id}"
    if ticket_id == 7:
        assert outcome.data["summary"] == "#7: Printer on fire"
        assert outcome.data["ticket"]["body"] == {"id": 7, "title": "Printer on fire", "status": "open"}
        assert_judged(outcome.call, outer=200, inner=200, rule=None, error_code=None)
    else:
        caught = outcome.data["ticket_error"]
        assert caught["error_code"] == "TicketNotFound"
        assert caught["message"] == f"Ticket 999 does not exist at {upstream.url}/api/tickets/999."
        assert_judged(outcome.call, outer=200, inner=404, rule=2, error_code="TicketNotFound")


@pytest.mark.parametrize(
    ("profile", "boundary", "end"),
    [
        pytest.param("ada", [], "EndProfileFetched", id="found"),
        pytest.param("nobody", ["ProfileMissing"], "EndNoProfile", id="missing"),
    ],
)
def test_bundled_http_connector_reports_an_upstream_404_as_http_error_404(
    arena: Arena, upstream: Server, profile: str, boundary: list[str], end: str
) -> None:
    url = f"{upstream.url}/profiles/{profile}"
    outcome = arena.run(DIAGRAMS / "fetch_profile.bpmn", {"profile_url": url})

    assert outcome.fired() == boundary
    assert outcome.reached() == [end]
    assert upstream.requests[-1] == f"GET /profiles/{profile}"
    if profile == "ada":
        assert outcome.data["profile"]["body"] == {"name": "Ada Lovelace", "since": 1843}
        assert_judged(outcome.call, outer=200, inner=200, rule=None, error_code=None)
    else:
        assert outcome.data["profile_error"]["error_code"] == "HttpError404"
        assert outcome.data["profile_error"]["message"] == f"GET {upstream.url} answered 404 Not Found."
        assert_judged(outcome.call, outer=200, inner=404, rule=2, error_code="HttpError404")


# --- Rule 3: an inner status >= 300 and no error -------------------------------------------------


def test_inner_status_503_without_an_error_becomes_service_task_http_error_503(arena: Arena) -> None:
    outcome = arena.run(DIAGRAMS / "check_stock.bpmn")

    assert outcome.fired() == ["StockServiceDown"]
    assert outcome.reached() == ["EndStockUnknown"]
    assert "stock" not in outcome.data
    caught = outcome.data["stock_error"]
    assert caught["error_code"] == "ServiceTaskHttpError503"
    assert caught["command_response_body"]["command_response"]["body"] == {"retry_after": 30}
    assert outcome.call.answer["error"] is None
    assert_judged(outcome.call, outer=200, inner=503, rule=3, error_code="ServiceTaskHttpError503")
    assert outcome.call.verdict.recorded_status == 503


# --- Rule 4: an outer status >= 300 without an error code ----------------------------------------


@pytest.mark.parametrize("api_key", [pytest.param("not-the-key", id="wrong key"), pytest.param(None, id="no key")])
def test_gateway_refusing_the_api_key_fails_on_the_outer_status(
    keyed_gateway: Gateway, connect: Callable[..., Arena], api_key: str | None
) -> None:
    outcome = connect(keyed_gateway.url, api_key).run(DIAGRAMS / "greet_guarded.bpmn")

    assert outcome.fired() == ["ProxyRefused"]
    assert outcome.reached() == ["EndProxyRefused"]
    assert outcome.data["proxy_error"]["error_code"] == BAD_STATUS
    assert outcome.data["proxy_error"]["message"] == (
        "Unauthorized A critical component (The connector proxy) is not responding correctly."
    )
    assert outcome.call.answer == {"error": "Unauthorized"}
    assert_judged(outcome.call, outer=401, inner=None, rule=4, error_code=BAD_STATUS)
    assert outcome.call.verdict.recorded_status == 401
