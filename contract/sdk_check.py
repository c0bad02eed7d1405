"""Calls a running healthd through the Python client generated from openapi.yaml.

Part of the sdk stage of contract/run.sh, which generates `healthd_client`
into target/contract/python-client, type-checks this file against it with
mypy --strict and then runs it. It proves that a client generated from the
contract can talk to the server and gets typed results back: enums as the
generated enums, times as datetimes, errors as Problem.

Environment:
  HEALTHD_URL      base URL of the running server (required)
  HEALTHD_TOKEN    a configured bearer token (required)
  HEALTHD_CHECK    a configured check name (default "disk")
  HEALTHD_DETAILS  the server's `details` setting (default "authorized")
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from http import HTTPStatus
from typing import TypeVar

from healthd_client import AuthenticatedClient, Client
from healthd_client.api.meta import get_metrics, get_openapi_json, get_openapi_yaml
from healthd_client.api.probes import get_liveness, get_readiness, get_startup
from healthd_client.api.report import get_check, get_health, head_check, head_health
from healthd_client.models import CheckResult, ComponentType, HealthReport, HealthStatus, Problem
from healthd_client.types import Response, Unset

URL = os.environ["HEALTHD_URL"].rstrip("/")
TOKEN = os.environ["HEALTHD_TOKEN"]
CHECK = os.environ.get("HEALTHD_CHECK") or "disk"
DETAILS = os.environ.get("HEALTHD_DETAILS") or "authorized"
MISSING = "no-such-check-" + "x" * 20

calls = 0
T = TypeVar("T")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def counted(response: Response[T]) -> Response[T]:
    global calls
    calls += 1
    return response


def status_matches(report: HealthReport, code: HTTPStatus, what: str) -> None:
    """pass and warn answer 200, fail answers 503 (DESIGN.md, the IETF draft)."""
    expect(isinstance(report.status, HealthStatus), f"{what}: status is {type(report.status)!r}, not HealthStatus")
    wanted = HTTPStatus.SERVICE_UNAVAILABLE if report.status is HealthStatus.FAIL else HTTPStatus.OK
    expect(code == wanted, f"{what}: status {report.status} answered {int(code)}, not {int(wanted)}")


def readings_are_typed(report: HealthReport, what: str) -> list[CheckResult]:
    expect(not isinstance(report.checks, Unset), f"{what}: no checks with a token")
    assert not isinstance(report.checks, Unset)
    found: list[CheckResult] = []
    for key, readings in report.checks.additional_properties.items():
        expect(":" in key, f"{what}: key {key!r} is not component:measurement")
        expect(len(readings) > 0, f"{what}: {key} has no readings")
        for reading in readings:
            expect(isinstance(reading, CheckResult), f"{what}: {key} holds {type(reading)!r}")
            expect(isinstance(reading.status, HealthStatus), f"{what}: {key} status is not HealthStatus")
            expect(isinstance(reading.component_type, ComponentType), f"{what}: {key} componentType untyped")
            expect(isinstance(reading.time, datetime.datetime), f"{what}: {key} time is not a datetime")
            expect(reading.time.tzinfo is not None, f"{what}: {key} time has no UTC offset")
            expect(key.startswith(reading.component_id + ":"), f"{what}: {key} holds componentId {reading.component_id!r}")
            if reading.status is HealthStatus.PASS:
                expect(isinstance(reading.output, Unset), f"{what}: {key} passes but has output")
            found.append(reading)
    return found


def problem(response: Response[HealthReport | Problem] | Response[Problem | str], code: HTTPStatus, what: str) -> Problem:
    expect(response.status_code == code, f"{what}: answered {int(response.status_code)}, not {int(code)}")
    expect(
        response.headers.get("content-type", "").startswith("application/problem+json"),
        f"{what}: content-type {response.headers.get('content-type')!r}",
    )
    body = response.parsed
    expect(isinstance(body, Problem), f"{what}: parsed as {type(body)!r}, not Problem")
    assert isinstance(body, Problem)
    expect(body.status == int(code), f"{what}: problem status {body.status}")
    if code == HTTPStatus.UNAUTHORIZED:
        challenge = response.headers.get("www-authenticate", "")
        expect(challenge.lower().startswith("bearer"), f"{what}: WWW-Authenticate is {challenge!r}")
    return body


def main() -> int:
    # raise_on_unexpected_status: a status the contract does not document is an error.
    anonymous = Client(base_url=URL, raise_on_unexpected_status=True)
    authorized = AuthenticatedClient(base_url=URL, token=TOKEN, raise_on_unexpected_status=True)
    wrong = AuthenticatedClient(base_url=URL, token=TOKEN + "-wrong", raise_on_unexpected_status=True)

    # The probes answer everyone the same, so they are called without a token.
    # (`# type: ignore[arg-type]` on the anonymous calls of operations whose
    # `security` is `[{}]`: openapi-python-client reads any non-empty
    # `security` as "needs a token" and types their `client` as
    # AuthenticatedClient. `security: []` in the contract would say "no
    # authentication" the way the generator understands; then the ignores
    # become unused and can go.)
    probes = (("live", get_liveness.sync_detailed), ("ready", get_readiness.sync_detailed), ("startup", get_startup.sync_detailed))
    for name, probe in probes:
        response = counted(probe(client=anonymous))  # type: ignore[arg-type, unused-ignore]
        expect(isinstance(response.parsed, HealthReport), f"GET /health/{name}: parsed as {type(response.parsed)!r}")
        assert isinstance(response.parsed, HealthReport)
        status_matches(response.parsed, response.status_code, f"GET /health/{name}")
    live = counted(get_liveness.sync_detailed(client=anonymous))  # type: ignore[arg-type, unused-ignore]
    expect(live.status_code == HTTPStatus.OK, "GET /health/live is not 200")

    # /health with a token: every check, typed.
    response = counted(get_health.sync_detailed(client=authorized))
    expect(isinstance(response.parsed, HealthReport), f"GET /health: parsed as {type(response.parsed)!r}")
    assert isinstance(response.parsed, HealthReport)
    report = response.parsed
    status_matches(report, response.status_code, "GET /health (token)")
    readings = readings_are_typed(report, "GET /health (token)")
    expect(any(r.component_id == CHECK for r in readings), f"GET /health (token): no reading of {CHECK!r}")

    # /health without a token: the status only (unless details = "always").
    response = counted(get_health.sync_detailed(client=anonymous))
    assert isinstance(response.parsed, HealthReport), f"GET /health (anonymous): {type(response.parsed)!r}"
    status_matches(response.parsed, response.status_code, "GET /health (anonymous)")
    if DETAILS != "always":
        expect(isinstance(response.parsed.checks, Unset), "GET /health (anonymous): checks disclosed")

    # A wrong token is refused, on the report too.
    problem(counted(get_health.sync_detailed(client=wrong)), HTTPStatus.UNAUTHORIZED, "GET /health (wrong token)")

    # One check, with the token.
    response = counted(get_check.sync_detailed(CHECK, client=authorized))
    expect(isinstance(response.parsed, HealthReport), f"GET /health/checks/{CHECK}: parsed as {type(response.parsed)!r}")
    assert isinstance(response.parsed, HealthReport)
    status_matches(response.parsed, response.status_code, f"GET /health/checks/{CHECK}")
    one = readings_are_typed(response.parsed, f"GET /health/checks/{CHECK}")
    expect(all(r.component_id == CHECK for r in one), f"GET /health/checks/{CHECK}: readings of other checks")

    # One check, without a token or with a wrong one; and one that does not exist.
    if DETAILS != "always":
        problem(counted(get_check.sync_detailed(CHECK, client=anonymous)), HTTPStatus.UNAUTHORIZED, f"GET /health/checks/{CHECK} (anonymous)")
    problem(counted(get_check.sync_detailed(CHECK, client=wrong)), HTTPStatus.UNAUTHORIZED, f"GET /health/checks/{CHECK} (wrong token)")
    problem(counted(get_check.sync_detailed(MISSING, client=authorized)), HTTPStatus.NOT_FOUND, "GET /health/checks/<missing>")

    # HEAD answers GET's status, without a body.
    head = counted(head_health.sync_detailed(client=authorized))
    expect(head.status_code in (HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE), f"HEAD /health: {int(head.status_code)}")
    expect(head.content == b"", "HEAD /health: has a body")
    head = counted(head_check.sync_detailed(CHECK, client=authorized))
    expect(head.status_code in (HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE), f"HEAD /health/checks/{CHECK}: {int(head.status_code)}")

    # Metrics: text with the token, 401 without.
    metrics = counted(get_metrics.sync_detailed(client=authorized))
    expect(metrics.status_code == HTTPStatus.OK, f"GET /metrics: {int(metrics.status_code)}")
    expect(isinstance(metrics.parsed, str) and metrics.parsed.strip() != "", "GET /metrics: no text")
    if DETAILS != "always":
        problem(counted(get_metrics.sync_detailed(client=anonymous)), HTTPStatus.UNAUTHORIZED, "GET /metrics (anonymous)")

    # The contract itself.
    yaml_doc = counted(get_openapi_yaml.sync_detailed(client=anonymous))  # type: ignore[arg-type, unused-ignore]
    expect(isinstance(yaml_doc.parsed, str) and yaml_doc.parsed.startswith("openapi: 3.1"), "GET /openapi.yaml: not the contract")
    json_doc = counted(get_openapi_json.sync_detailed(client=anonymous))  # type: ignore[arg-type, unused-ignore]
    expect(json_doc.status_code == HTTPStatus.OK, f"GET /openapi.json: {int(json_doc.status_code)}")

    print(f"python client: {calls} calls, typed results OK (status {report.status.value}, {len(readings)} readings)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as error:
        print(f"python client: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # the generated client could not parse an answer, or the server is down
        traceback.print_exc()
        print(f"python client: FAILED after {calls} calls: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
