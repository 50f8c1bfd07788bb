"""Schemathesis against the service's own ``/openapi.json``: the document is the contract a
client generator trusts, so every answer must be one it declares.

The schema is loaded from the ASGI app (no port, no process) and every operation is fuzzed
with a bounded number of examples. The checks are the ones that hold for this API whatever
the input:

* ``not_a_server_error``: no input, however malformed, yields a 5xx (the service's 503, the
  only 5xx it may answer here, shows up only in the not-ready run, where it is expected);
* ``status_code_conformance``: every status answered is declared for the operation;
* ``content_type_conformance``: every response's ``Content-Type`` is declared;
* ``response_headers_conformance``: declared required headers are present and well-typed;
* ``response_schema_conformance``: every JSON body validates against its declared model.

Left out on purpose: ``positive_data_acceptance`` (a schema cannot say "a decodable image" or
"a label below the number of classes", so some schema-valid requests are rightly a 400/422)
and the stateful checks (the API creates no resources).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    CheckFunction,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema

from service.app import create_app
from service.model import ServedModel
from service.settings import Settings

from .helpers import png

pytestmark = pytest.mark.timeout(240)

API_KEY = "schemathesis-key"
V2_INFER = "POST /v2/models/{name}/infer"
V2_IMAGE = {
    "name": "image",
    "datatype": "BYTES",
    "shape": [1],
    "data": [base64.b64encode(png(0)).decode()],
}
CONFORMANCE: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Run:
    """One fuzzing run: how requests are generated and what state the server is in."""

    mode: GenerationMode
    authenticated: bool = True  # send the right bearer token
    ready: bool = True  # False: the model never finishes loading (every route's 503)
    max_examples: int = 25  # per operation; enough to find a mismatch, quick on two cores

    @property
    def checks(self) -> list[CheckFunction]:
        return CONFORMANCE + ([not_a_server_error] if self.ready else [])


RUNS = {
    "positive": Run(GenerationMode.POSITIVE),
    "negative": Run(GenerationMode.NEGATIVE),
    "no-token": Run(GenerationMode.POSITIVE, authenticated=False, max_examples=8),
    "not-ready": Run(GenerationMode.POSITIVE, ready=False, max_examples=8),
}


@pytest.fixture(params=list(RUNS), ids=list(RUNS))
def run(request: pytest.FixtureRequest) -> Run:
    return RUNS[request.param]


@pytest.fixture
def api_schema(run: Run, served_model: ServedModel, tiny_model_dir: Path) -> Iterator[BaseSchema]:
    """The app's OpenAPI document, loaded through the app itself; its lifespan runs in
    schemathesis' ASGI portal until the test ends. ``ABN_API_KEY`` is set so that the 401
    branch is part of what is checked."""
    release = threading.Event()

    def never_ready(_: Settings) -> ServedModel:
        release.wait(60)
        return served_model

    settings_ = Settings(
        model_dir=tiny_model_dir,
        device="cpu",
        api_key=API_KEY,
        max_batch_size=4,
        max_queue_delay_seconds=0.0,
    )
    app = (
        create_app(settings_, model=served_model)
        if run.ready
        else create_app(settings_, loader=never_ready)
    )
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        if run.ready:
            wait_until_ready(schema)
        yield schema
    finally:
        release.set()
        asgi.shutdown_lifespans()  # schemathesis' pytest plugin does it too; twice is harmless


def wait_until_ready(schema: BaseSchema, timeout: float = 60.0) -> None:
    """Warm-up runs in the background after start-up; on a cold, busy machine the first
    generated requests would otherwise meet an honest 503 'warming' and fail the run."""
    readyz = schema["/readyz"]["GET"]
    deadline = time.monotonic() + timeout
    while readyz.Case().call().status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.05)


def fuzz(
    operation: APIOperation,
    run: Run,
    headers: dict[str, str],
    statuses: Counter[tuple[str, int]],
) -> None:
    """Send ``run.max_examples`` generated requests to one operation, validating each answer;
    count the statuses seen so the caller can tell the run reached what it meant to."""

    @given(case=operation.as_strategy(generation_mode=run.mode))
    @settings(
        max_examples=run.max_examples,
        deadline=None,
        derandomize=True,  # the same requests every run: a failure reproduces
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case) -> None:
        response = case.call_and_validate(checks=run.checks, headers=headers)
        statuses[(operation.label, response.status_code)] += 1

    check()


def test_every_response_matches_the_openapi_document(api_schema: BaseSchema, run: Run) -> None:
    """Every operation of the document, fuzzed; a failure names the operation and gives a
    curl line that reproduces it."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /classify",
        "POST /feedback",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/model",
    }
    headers = {"Authorization": f"Bearer {API_KEY}"} if run.authenticated else {}
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        if run.mode == GenerationMode.NEGATIVE and not (
            operation.body or operation.headers or operation.query or operation.path_parameters
        ):
            continue  # nothing to make invalid

        fuzz(operation, run, headers, statuses)
        if operation.label == "POST /feedback" and run.mode == GenerationMode.POSITIVE:
            # generated labels may all fall outside the classes (422): one valid unknown id,
            # so the document's 404 is checked in every run
            case = operation.Case(body={"id": "never-classified", "label": 0})
            response = case.call_and_validate(checks=run.checks, headers=headers)
            statuses[(operation.label, response.status_code)] += 1
        if operation.label == V2_INFER and run.mode == GenerationMode.POSITIVE:
            # generated model names are never the model's (404): one real request, so the
            # 200 (JSON, and binary outputs) is checked against the document too
            for parameters in ({"budget": "100M"}, {"binary_data_output": True}):
                case = operation.Case(
                    path_parameters={"name": "tiny-test"},
                    body={"inputs": [V2_IMAGE], "parameters": parameters},
                    media_type="application/json",
                )
                response = case.call_and_validate(checks=run.checks, headers=headers)
                statuses[(operation.label, response.status_code)] += 1
    print(sorted(statuses.items()))
    # the run reached what it was meant to reach
    if not run.ready:
        assert statuses[("GET /readyz", 503)] and statuses[("GET /v1/model", 503)], statuses
    elif not run.authenticated:
        assert statuses[("POST /classify", 401)] and statuses[("POST /feedback", 401)], statuses
    elif run.mode == GenerationMode.POSITIVE:
        assert statuses[("POST /classify", 200)] and statuses[("POST /feedback", 404)], statuses
        assert statuses[(V2_INFER, 200)] == 2, statuses
    else:
        assert statuses[("POST /classify", 422)] and statuses[("POST /feedback", 422)], statuses
