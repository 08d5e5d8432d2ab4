"""Arena's side of the connector-proxy protocol, for running real BPMN diagrams against a proxy.

`Arena.run` executes a diagram with spiff-arena-common's parser and `CustomServiceTask`; each
service task calls the proxy over HTTP the way spiff-arena's backend does, and the answer is
judged by the contract's five rules, in order (shared/protocol/CONTRACT.md). Every call is
recorded with its outer status, parsed answer, verdict and any departure from the published
OpenAPI document.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from spiff_arena_common.runner import (
    CustomScriptEngine,
    CustomServiceTask,
    SpiffJsonEncoder,
    hydrate_workflow,
    specs_from_xml,
)
from SpiffWorkflow.bpmn.specs.mixins.events.end_event import EndEvent
from SpiffWorkflow.bpmn.specs.mixins.events.intermediate_event import BoundaryEvent
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.exceptions import WorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskFilter, TaskState

OPENAPI_PATH = Path(__file__).parents[1] / "data" / "spiff-arena-connector-proxy.openapi.json"
OPENAPI_URI = "urn:spiff-arena:connector-proxy-openapi"

API_KEY_HEADER = "Spiff-Connector-Proxy-Api-Key"
USER_AGENT = "spiffworkflow-backend"
INVALID_JSON = "ServiceTaskOperatorReturnedInvalidJsonError"
BAD_STATUS = "ServiceTaskOperatorReturnedBadStatusError"

# Arena waits 45 s for /v1/do; a test gives up sooner so that a hung gateway fails it quickly.
CALL_TIMEOUT = 15.0
# More engine rounds than any diagram here needs: a loop in a diagram fails instead of spinning.
MAX_ENGINE_ROUNDS = 50


@dataclass(frozen=True)
class Verdict:
    """How Arena judged one answer: the rule that decided (None: success), the failure, the status it keeps.

    `recorded_status` is what Arena's retries look at: the inner status when rule 3 (or an error
    beside an inner status >= 300) decided, else the outer one.
    """

    rule: int | None
    error_code: str | None
    message: str
    recorded_status: int

    @property
    def waits(self) -> bool:
        return self.rule == 5


def judge(outer_status: int, text: str) -> tuple[Any, Verdict]:
    """The parsed answer and Arena's verdict on it: the first of the five rules that applies decides."""
    try:
        answer = json.loads(text or "{}")  # Arena reads an empty body as {}
    except ValueError:
        return None, Verdict(1, INVALID_JSON, text, outer_status)

    inner_status = _inner_status(answer)
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and error.get("error_code"):
        recorded = inner_status if inner_status is not None and inner_status >= 300 else outer_status
        return answer, Verdict(2, str(error["error_code"]), str(error.get("message", "")), recorded)
    if inner_status is not None and inner_status >= 300:
        message = f"Service task received HTTP {inner_status} from upstream service."
        return answer, Verdict(3, f"ServiceTaskHttpError{inner_status}", message, inner_status)
    if outer_status >= 300:
        said = json.dumps(error) if isinstance(error, list | dict) else str(error or "") or text
        message = f"{said} A critical component (The connector proxy) is not responding correctly."
        return answer, Verdict(4, BAD_STATUS, message, outer_status)
    if outer_status == 202:
        return answer, Verdict(5, None, "accepted; waiting for the callback", outer_status)
    return answer, Verdict(None, None, "", outer_status)


def _inner_status(answer: Any) -> int | None:
    if not isinstance(answer, dict) or not _is_v2(answer):
        return None
    response = answer.get("command_response")
    status = response.get("http_status") if isinstance(response, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _is_v2(answer: dict[str, Any]) -> bool:
    version = answer.get("command_response_version", 0)
    return isinstance(version, int) and version > 1


def stored_result(operator: str, answer: Any) -> Any:
    """What Arena keeps in the result variable: a v2 answer's command_response plus operator_identifier."""
    if isinstance(answer, dict) and _is_v2(answer) and isinstance(answer.get("command_response"), dict):
        return {**answer["command_response"], "operator_identifier": operator}
    return answer


class ProtocolSchemas:
    """The published OpenAPI document's answer schemas, with their $refs resolved through a registry."""

    UNAUTHORIZED = "/components/responses/Unauthorized/content/application~1json/schema"
    ENVELOPE = "/components/schemas/ConnectorProxyResponseV2"
    PROTOCOL_ERROR = "/components/schemas/ConnectorProxyProtocolError"
    INVOCATION = "/components/schemas/CommandInvocation"

    def __init__(self, document: Mapping[str, Any]) -> None:
        resource: Resource[Any] = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, resource)

    @classmethod
    def published(cls) -> ProtocolSchemas:
        return cls(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))

    def answer_problems(self, outer_status: int, content_type: str, text: str) -> list[str]:
        """What is wrong with an answer to /v1/do, by the schema its status calls for; [] when nothing."""
        problems = []
        if content_type.split(";")[0].strip() != "application/json":
            problems.append(f"Content-Type is {content_type!r}, not application/json")
        try:
            answer = json.loads(text)
        except ValueError as exc:
            return [*problems, f"the body is not JSON ({exc}): {text[:200]!r}"]

        if outer_status == 401:
            pointer = self.UNAUTHORIZED
        elif 200 <= outer_status < 300:
            pointer = self.ENVELOPE
        else:
            pointer = self.PROTOCOL_ERROR
        return problems + self.problems(pointer, answer)

    def problems(self, pointer: str, instance: Any) -> list[str]:
        schema = {"$ref": f"{OPENAPI_URI}#{pointer}"}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        name = pointer.rsplit("/", 1)[-1]
        return [
            f"{name} at {'/'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
            for error in validator.iter_errors(instance)
        ]


@dataclass(frozen=True)
class Call:
    """One POST /v1/do as Arena made it, and what came back."""

    operator: str
    task_id: str
    sent: dict[str, Any]
    headers: dict[str, str]
    outer_status: int
    text: str
    answer: Any
    verdict: Verdict
    schema_problems: list[str]

    @property
    def inner_status(self) -> int | None:
        return _inner_status(self.answer)


@dataclass(frozen=True)
class Outcome:
    """Where a process instance stopped: completed, failed on an uncaught error, or waiting."""

    workflow: BpmnWorkflow
    error: WorkflowException | None
    calls: tuple[Call, ...]

    @property
    def completed(self) -> bool:
        return bool(self.workflow.completed)

    @property
    def data(self) -> dict[str, Any]:
        """The process's final data, or the failed task's data when an error stopped it."""
        task = getattr(self.error, "task", None)
        return dict(task.data) if task is not None else dict(self.workflow.data)

    @property
    def call(self) -> Call:
        assert len(self.calls) == 1, f"expected one call to the proxy, got {len(self.calls)}"
        return self.calls[0]

    def reached(self) -> list[str]:
        """The end events reached, by BPMN id."""
        return self._completed(EndEvent)

    def fired(self) -> list[str]:
        """The boundary events that caught something, by BPMN id."""
        return self._completed(BoundaryEvent)

    def in_state(self, state: TaskState) -> list[str]:
        tasks = self.workflow.get_tasks(task_filter=TaskFilter(state=state))
        return [task.task_spec.bpmn_id for task in tasks if task.task_spec.bpmn_id]

    def _completed(self, kind: type) -> list[str]:
        tasks = self.workflow.get_tasks(task_filter=TaskFilter(state=TaskState.COMPLETED))
        return [task.task_spec.bpmn_id for task in tasks if isinstance(task.task_spec, kind)]


@dataclass
class Arena:
    """The parts of spiff-arena's backend that call a connector proxy, configured like the backend.

    `proxy_url` and `api_key` are SPIFFWORKFLOW_BACKEND_CONNECTOR_PROXY_URL and _API_KEY;
    `backend_url` is only used to build spiff__callback_url, which nothing here serves.
    """

    proxy_url: str
    api_key: str | None = None
    backend_url: str = "http://127.0.0.1:7000"
    schemas: ProtocolSchemas = field(default_factory=ProtocolSchemas.published)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._instance_ids = itertools.count(1)
        self._client = httpx2.Client(timeout=CALL_TIMEOUT, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def run(self, diagram: Path, data: Mapping[str, Any] | None = None) -> Outcome:
        """Start a process instance of the diagram's process with `data` and run it as far as it goes."""
        specs, problem = specs_from_xml([(diagram.name, diagram.read_text(encoding="utf-8"))])
        if specs is None:
            raise ValueError(f"Diagram '{diagram}' cannot be parsed: {problem}")
        workflow = hydrate_workflow(specs, None)
        instance_id = next(self._instance_ids)
        workflow.script_engine = ArenaScriptEngine(self, instance_id, f"e2e/{workflow.spec.name}")
        start = workflow.get_tasks(task_filter=TaskFilter(state=TaskState.READY, spec_name="Start"))
        start[0].data.update(data or {})

        first_call = len(self.calls)
        try:
            self._advance(workflow)
        except WorkflowException as error:
            return Outcome(workflow, error, tuple(self.calls[first_call:]))
        return Outcome(workflow, None, tuple(self.calls[first_call:]))

    def call_connector(self, operator: str, params: dict[str, Any], task: Task, instance_id: int, model: str) -> Call:
        """POST {proxy}/v1/do/{operator} with the parameters by value and the five spiff__ keys."""
        body = {
            **params,
            "spiff__process_instance_id": instance_id,
            "spiff__process_model_identifier": model,
            "spiff__task_id": str(task.id),
            "spiff__task_data": task.data,
            "spiff__callback_url": f"{self.backend_url}/v1.0/tasks/{instance_id}/{task.id}/callback",
        }
        content = json.dumps(body, cls=SpiffJsonEncoder)
        sent = json.loads(content)
        invalid = self.schemas.problems(ProtocolSchemas.INVOCATION, sent)
        assert not invalid, f"the harness built an invalid request: {invalid}"

        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.api_key is not None:
            headers[API_KEY_HEADER] = self.api_key
        response = self._client.post(f"{self.proxy_url}/v1/do/{operator}", content=content, headers=headers)

        answer, verdict = judge(response.status_code, response.text)
        problems = self.schemas.answer_problems(
            response.status_code, response.headers.get("content-type", ""), response.text
        )
        call = Call(
            operator, str(task.id), sent, headers, response.status_code, response.text, answer, verdict, problems
        )
        self.calls.append(call)
        return call

    def _advance(self, workflow: BpmnWorkflow) -> None:
        """Run engine steps; complete each answered service task as spiff-arena-common's runner does."""
        for _ in range(MAX_ENGINE_ROUNDS):
            workflow.do_engine_steps()
            answered = [
                task
                for task in workflow.get_tasks(task_filter=TaskFilter(state=TaskState.STARTED))
                if isinstance(task.task_spec, CustomServiceTask) and not self._waits(task)
            ]
            if not answered:
                return
            for task in answered:
                if not task.task_spec.handle_completed_result(task):
                    task.complete()
        raise AssertionError(f"Process '{workflow.spec.name}' still runs after {MAX_ENGINE_ROUNDS} rounds.")

    def _waits(self, task: Task) -> bool:
        calls = [call for call in self.calls if call.task_id == str(task.id)]
        return bool(calls) and calls[-1].verdict.waits


class ArenaScriptEngine(CustomScriptEngine):
    """spiff-arena-common's script engine whose call_service makes Arena's real call to the proxy."""

    def __init__(self, arena: Arena, instance_id: int, model: str) -> None:
        super().__init__()
        self.arena = arena
        self.instance_id = instance_id
        self.model = model

    def call_service(self, context: Task, **kwargs: Any) -> str:
        params = {name: param["value"] for name, param in kwargs["operation_params"].items()}
        operator: str = kwargs["operation_name"]
        call = self.arena.call_connector(operator, params, context, self.instance_id, self.model)
        return json.dumps(_for_service_task(call), cls=SpiffJsonEncoder)


def _for_service_task(call: Call) -> Any:
    """The text CustomServiceTask parses: it stores a result, or routes `error.error_code` to a boundary event.

    Rules 2 and 3 are left to CustomServiceTask, which reads the envelope itself (and turns an inner
    status >= 300 into ServiceTaskHttpError<N>); rules 1 and 4 depend on the raw text and the outer
    status, which only the caller sees, so they arrive as the error Arena would have made of them.
    """
    verdict = call.verdict
    if verdict.rule in (1, 4):
        return {"error": {"error_code": verdict.error_code, "message": verdict.message}}
    if verdict.rule in (2, 3):
        return call.answer
    return stored_result(call.operator, call.answer)
