// The browser stage of contract/run.sh: Swagger UI, as a person would use it.
//
// Opens $HEALTHD_URL/swagger-ui/ in Debian's headless Chromium (driven by
// playwright-core, which downloads no browser of its own), and asserts that
//   - the page loads with no script error and fetches nothing from another
//     origin (Swagger UI is served from the binary, no CDN);
//   - every operation of the contract (path, method, operationId) is listed;
//   - GET /health can be expanded, "Try it out" and "Execute" send the
//     request to this server, and the answer shown is a 200 whose body
//     holds "status".
// HEALTHD_URL may have a path (http://gateway/ops behind a proxy): the
// contract must then be loaded from /ops/openapi.yaml and "Try it out"
// must call /ops/health.
// It saves a screenshot to $SWAGGER_SCREENSHOT.
//
// Environment: HEALTHD_URL (required), CONTRACT_SPEC_JSON (the local
// openapi.yaml as JSON, written by run.sh), SWAGGER_SCREENSHOT,
// CHROMIUM (default /usr/bin/chromium).

import { readFileSync } from "node:fs";
import { inBrowser } from "./browser.mjs";

const base = (process.env.HEALTHD_URL ?? "").replace(/\/+$/, "");
const specPath = process.env.CONTRACT_SPEC_JSON;
const screenshot = process.env.SWAGGER_SCREENSHOT ?? "swagger-ui.png";
const TIMEOUT = 20_000;
const METHODS = ["get", "head", "put", "post", "delete", "options", "patch", "trace"];

if (!base || !specPath) {
  console.error("swagger.mjs: HEALTHD_URL and CONTRACT_SPEC_JSON must be set");
  process.exit(2);
}

const spec = JSON.parse(readFileSync(specPath, "utf8"));
const operations = [];
for (const [path, item] of Object.entries(spec.paths ?? {})) {
  for (const method of METHODS) {
    const op = item[method];
    if (op) operations.push({ path, method, operationId: op.operationId, tag: op.tags?.[0] ?? "default" });
  }
}
const origin = new URL(base).origin;
const basePath = new URL(base).pathname.replace(/\/+$/, "");

const foreign = new Set();
const contracts = [];
await inBrowser({ label: "swagger-ui", timeout: TIMEOUT, screenshot }, async (page, problems) => {
  page.on("request", (request) => {
    const url = request.url();
    if (/^https?:/.test(url) && new URL(url).origin !== origin) foreign.add(url);
  });
  page.on("response", (response) => {
    const { pathname } = new URL(response.url());
    if (pathname.endsWith("/openapi.yaml")) contracts.push(`${pathname} ${response.status()}`);
  });

  const response = await page.goto(`${base}/swagger-ui/`, { waitUntil: "load" });
  if (!response || response.status() !== 200) throw new Error(`GET /swagger-ui/ answered ${response?.status()}`);

  // Every operation of the contract is listed. Swagger UI gives each one the
  // id "operations-<first tag>-<operationId>".
  await page.locator(".opblock").first().waitFor();
  const missing = [];
  for (const op of operations) {
    const block = page.locator(`[id="operations-${op.tag}-${op.operationId}"]`);
    if ((await block.count()) !== 1) {
      missing.push(`${op.method.toUpperCase()} ${op.path} (${op.operationId}): not listed`);
      continue;
    }
    const classes = (await block.getAttribute("class")) ?? "";
    const shownPath = await block.locator(".opblock-summary-path").first().getAttribute("data-path");
    if (!classes.split(/\s+/).includes(`opblock-${op.method}`) || shownPath !== op.path) {
      missing.push(`${op.method.toUpperCase()} ${op.path} (${op.operationId}): listed as ${classes} ${shownPath}`);
    }
  }
  if (!contracts.includes(`${basePath}/openapi.yaml 200`)) {
    throw new Error(`Swagger UI did not load the contract from ${basePath}/openapi.yaml: ${contracts.join(", ") || "no request"}`);
  }
  const listed = await page.locator(".opblock").count();
  if (missing.length) throw new Error(`operations missing from Swagger UI: ${missing.join("; ")}`);
  console.log(`listed: ${operations.length} operations of the contract (${listed} blocks on the page)`);

  // Where "Execute" will send the request: the server Swagger UI selected
  // from the contract's `servers`. An absolute server URL other than this
  // healthd's own origin sends the request elsewhere (and cross-origin).
  const selected = await page.evaluate(() => {
    const select = document.querySelector(".servers select");
    return select ? select.value : null;
  });
  if (selected !== null) {
    const target = new URL(selected, `${base}/openapi.yaml`).origin;
    if (target !== origin) {
      throw new Error(
        `Swagger UI would send "Try it out" requests to ${selected} (openapi.yaml \`servers\`), ` +
          `not to ${origin}, where this healthd listens; Execute can only work when healthd listens ` +
          `exactly there. A relative server URL (e.g. \`servers: [{url: /}]\`) would follow the page.`,
      );
    }
  }

  // Expand GET /health, Try it out, Execute.
  const health = page.locator('[id="operations-report-getHealth"]');
  await health.locator(".opblock-summary").first().click();
  await health.locator("button.try-out__btn").click();
  const [answer] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname.endsWith("/health") && r.request().method() === "GET"),
    health.locator("button.execute").click(),
  ]);
  const live = health.locator(".live-responses-table .response").first();
  await live.waitFor();
  const code = (await live.locator(".response-col_status").innerText()).trim();
  const body = await live.locator(".response-col_description pre, .response-col_description .microlight").first().innerText();
  const called = new URL(answer.url()).pathname;
  console.log(`execute: GET ${called} answered ${answer.status()}, Swagger UI shows ${code}`);
  if (called !== `${basePath}/health`) throw new Error(`"Try it out" called ${called}, not ${basePath}/health`);
  // The operation as Swagger UI shows it, from its title to the live response.
  await page.setViewportSize({ width: 1280, height: 1200 });
  await page.evaluate(() => document.querySelector('[id="operations-report-getHealth"]')?.scrollIntoView({ block: "start" }));
  await page.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);
  const oneLine = body.replace(/\s+/g, " ").slice(0, 200);
  if (code !== "200") throw new Error(`Swagger UI shows ${code} for GET /health, not 200: ${oneLine}`);
  if (!body.includes('"status"')) throw new Error(`the response shown has no "status": ${oneLine}`);
  if (foreign.size) problems.push(`requests to other origins (Swagger UI must not need a CDN): ${[...foreign].join(", ")}`);
  return `${operations.length} operations listed from ${basePath}/openapi.yaml, GET ${called} executed: ${code}`;
});
