// Calls a running healthd with fetch, typed by the TypeScript types that
// openapi-typescript generates from openapi.yaml (target/contract/ts/schema.d.ts).
//
// Part of the sdk stage of contract/run.sh: `tsc --noEmit --strict` proves
// that a TypeScript program written against the contract's types compiles
// (a renamed field, a new status value or a removed operation breaks it),
// and running it proves that the live server's answers have those shapes.
//
// Environment: HEALTHD_URL, HEALTHD_TOKEN (required); HEALTHD_CHECK
// (default "disk"); HEALTHD_DETAILS (the server's `details`, default "authorized").

import type { components, operations, paths } from "healthd-schema";

type HealthReport = components["schemas"]["HealthReport"];
type CheckResult = components["schemas"]["CheckResult"];
type HealthStatus = components["schemas"]["HealthStatus"];
type ComponentType = components["schemas"]["ComponentType"];
type Problem = components["schemas"]["Problem"];

// Bodies, exactly as the contract types each operation's responses.
type HealthBody = operations["getHealth"]["responses"][200]["content"]["application/health+json"];
type HealthFailBody = operations["getHealth"]["responses"][503]["content"]["application/health+json"];
type CheckBody = operations["getCheck"]["responses"][200]["content"]["application/health+json"];
type CheckName = operations["getCheck"]["parameters"]["path"]["name"];
type UnauthorizedBody = operations["getCheck"]["responses"][401]["content"]["application/problem+json"];
type NotFoundBody = operations["getCheck"]["responses"][404]["content"]["application/problem+json"];
type LivenessBody = paths["/health/live"]["get"]["responses"][200]["content"]["application/health+json"];
type MetricsBody = paths["/metrics"]["get"]["responses"][200]["content"]["text/plain; version=0.0.4"];

// Every status value, checked against the contract both ways at compile time:
// `satisfies` rejects a value the contract does not have, and `Exhaustive`
// rejects a contract value missing here.
const STATUSES = ["pass", "warn", "fail"] as const satisfies readonly HealthStatus[];
const COMPONENT_TYPES = ["datastore", "component", "system"] as const satisfies readonly ComponentType[];
type Exhaustive<Union, Listed> = [Exclude<Union, Listed>] extends [never] ? true : false;
const statusesComplete: Exhaustive<HealthStatus, (typeof STATUSES)[number]> = true;
const componentTypesComplete: Exhaustive<ComponentType, (typeof COMPONENT_TYPES)[number]> = true;

// The documented status codes of each operation, from the types.
type Codes<Op extends keyof operations> = keyof operations[Op]["responses"] & number;
const HEALTH_CODES = [200, 400, 401, 403, 503] as const satisfies readonly Codes<"getHealth">[];
const CHECK_CODES = [200, 400, 401, 403, 404, 503] as const satisfies readonly Codes<"getCheck">[];

const base = (process.env["HEALTHD_URL"] ?? "").replace(/\/+$/, "");
const token = process.env["HEALTHD_TOKEN"] ?? "";
const check: CheckName = process.env["HEALTHD_CHECK"] || "disk";
const details = process.env["HEALTHD_DETAILS"] || "authorized";
let calls = 0;

function expect(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(what);
}

function isHealthStatus(value: unknown): value is HealthStatus {
  return (STATUSES as readonly unknown[]).includes(value);
}

function isComponentType(value: unknown): value is ComponentType {
  return (COMPONENT_TYPES as readonly unknown[]).includes(value);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Runtime guards that mirror the generated types (which fetch cannot check).
function isCheckResult(value: unknown): value is CheckResult {
  return (
    isObject(value) &&
    typeof value["componentId"] === "string" &&
    isComponentType(value["componentType"]) &&
    isHealthStatus(value["status"]) &&
    typeof value["time"] === "string" &&
    !Number.isNaN(Date.parse(value["time"])) &&
    (value["observedValue"] === undefined || typeof value["observedValue"] === "number") &&
    (value["output"] === undefined || typeof value["output"] === "string")
  );
}

function isHealthReport(value: unknown): value is HealthReport {
  if (!isObject(value) || !isHealthStatus(value["status"])) return false;
  const checks = value["checks"];
  if (checks === undefined) return true;
  return isObject(checks) && Object.values(checks).every((list) => Array.isArray(list) && list.every(isCheckResult));
}

function isProblem(value: unknown): value is Problem {
  return (
    isObject(value) &&
    typeof value["type"] === "string" &&
    typeof value["title"] === "string" &&
    typeof value["status"] === "number"
  );
}

type Who = "token" | "anonymous" | "wrong token";

async function call(path: string, who: Who, method: "GET" | "HEAD" = "GET"): Promise<Response> {
  const headers: Record<string, string> = {};
  if (who === "token") headers["Authorization"] = `Bearer ${token}`;
  if (who === "wrong token") headers["Authorization"] = `Bearer ${token}-wrong`;
  calls += 1;
  return fetch(`${base}${path}`, { method, headers, redirect: "manual" });
}

async function report(path: string, who: Who, codes: readonly number[]): Promise<HealthBody | HealthFailBody> {
  const response = await call(path, who);
  const what = `GET ${path} (${who})`;
  expect(codes.includes(response.status), `${what}: undocumented status ${response.status}`);
  expect((response.headers.get("content-type") ?? "").startsWith("application/health+json"), `${what}: content-type`);
  const body: unknown = await response.json();
  expect(isHealthReport(body), `${what}: not a HealthReport: ${JSON.stringify(body)}`);
  // pass and warn answer 200, fail answers 503.
  const wanted = body.status === "fail" ? 503 : 200;
  expect(response.status === wanted, `${what}: status ${body.status} answered ${response.status}`);
  return body;
}

async function problem(path: string, who: Who, code: 401 | 404): Promise<UnauthorizedBody | NotFoundBody> {
  const response = await call(path, who);
  const what = `GET ${path} (${who})`;
  expect(response.status === code, `${what}: answered ${response.status}, not ${code}`);
  expect((response.headers.get("content-type") ?? "").startsWith("application/problem+json"), `${what}: content-type`);
  if (code === 401) {
    expect((response.headers.get("www-authenticate") ?? "").toLowerCase().startsWith("bearer"), `${what}: WWW-Authenticate`);
  }
  const body: unknown = await response.json();
  expect(isProblem(body) && body.status === code, `${what}: not a Problem: ${JSON.stringify(body)}`);
  return body;
}

function readings(body: HealthReport, what: string): CheckResult[] {
  expect(body.checks !== undefined, `${what}: no checks with a token`);
  const found: CheckResult[] = [];
  for (const [key, list] of Object.entries(body.checks)) {
    expect(/^[^:]+:.+$/.test(key), `${what}: key ${key} is not component:measurement`);
    for (const reading of list) {
      expect(key.startsWith(`${reading.componentId}:`), `${what}: ${key} holds ${reading.componentId}`);
      if (reading.status === "pass") expect(reading.output === undefined, `${what}: ${key} passes with output`);
      found.push(reading);
    }
  }
  return found;
}

async function main(): Promise<void> {
  expect(base !== "" && token !== "", "HEALTHD_URL and HEALTHD_TOKEN must be set");
  expect(statusesComplete && componentTypesComplete, "unreachable");

  const live: LivenessBody = await report("/health/live", "anonymous", [200]);
  expect(live.status !== "fail", "GET /health/live: fail");
  await report("/health/ready", "anonymous", [200, 503]);
  await report("/health/startup", "anonymous", [200, 503]);

  const full = await report("/health", "token", HEALTH_CODES);
  const all = readings(full, "GET /health (token)");
  expect(all.some((reading) => reading.componentId === check), `GET /health (token): no reading of ${check}`);

  const anonymous = await report("/health", "anonymous", HEALTH_CODES);
  if (details !== "always") expect(anonymous.checks === undefined, "GET /health (anonymous): checks disclosed");
  await problem("/health", "wrong token", 401);

  const path = `/health/checks/${encodeURIComponent(check)}`;
  const one: CheckBody = await report(path, "token", CHECK_CODES);
  expect(readings(one, `GET ${path}`).every((reading) => reading.componentId === check), `GET ${path}: other checks`);
  if (details !== "always") await problem(path, "anonymous", 401);
  await problem(path, "wrong token", 401);
  await problem("/health/checks/no-such-check-xxxxxxxxxxxxxxxxxxxx", "token", 404);

  const head = await call("/health", "token", "HEAD");
  expect(HEALTH_CODES.some((code) => code === head.status), `HEAD /health: ${head.status}`);
  expect((await head.text()) === "", "HEAD /health: has a body");

  const metrics = await call("/metrics", "token");
  expect(metrics.status === 200, `GET /metrics: ${metrics.status}`);
  const text: MetricsBody = await metrics.text();
  expect(text.trim() !== "", "GET /metrics: empty");
  if (details !== "always") await problem("/metrics", "anonymous", 401);

  console.log(`typescript client: ${calls} calls, typed results OK (status ${full.status}, ${all.length} readings)`);
}

main().catch((error: unknown) => {
  console.error(`typescript client: FAILED: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
