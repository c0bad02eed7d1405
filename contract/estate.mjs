// The browser stage of contract/run.sh, third part: the status page over a
// real estate (the contract xtask starts a healthd with 1,000 checks and a
// SQLite store for it).
//
// Opens $STATUS_ESTATE_URL/status in Debian's headless Chromium, types the
// token in, and asserts that
//   - the first rows are the failing checks ($STATUS_ESTATE_FAILING, in
//     configured order), then the warning ones ($STATUS_ESTATE_WARNING), then
//     passing ones, a page of 50 at a time, with the counts of all;
//   - each refresh is one request, to health/page: counted by the browser
//     (every request it makes) and by healthd (healthd_http_requests_total
//     in /metrics, which this script alone reads), over at least 4
//     refreshes, with at least one answered 304;
//   - the filter and the pager ask for what they show; a row's incidents
//     are fetched when it is opened, and list its change to fail;
//   - each row has its 90-day bar and its 24 h / 7 d / 30 d table;
//   - nothing is loaded from elsewhere, nothing overflows on a phone, and
//     axe-core finds no serious or critical violation.
// Every wait polls with a deadline. Saves a screenshot to $ESTATE_SCREENSHOT.
//
// Environment: STATUS_ESTATE_URL, STATUS_ESTATE_FAILING, STATUS_ESTATE_WARNING,
// HEALTHD_TOKEN (required), ESTATE_SCREENSHOT, CHROMIUM.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { inBrowser } from "./browser.mjs";

const base = (process.env.STATUS_ESTATE_URL ?? "").replace(/\/+$/, "");
const token = process.env.HEALTHD_TOKEN ?? "";
const failing = (process.env.STATUS_ESTATE_FAILING ?? "").split(",").filter(Boolean);
const warning = (process.env.STATUS_ESTATE_WARNING ?? "").split(",").filter(Boolean);
const screenshot = process.env.ESTATE_SCREENSHOT ?? "status-estate.png";
// Generous: the page refreshes every 5 s and the machine may be busy.
const TIMEOUT = 60_000;
const PAGE_SIZE = 50;
const REFRESHES = 4;

if (!base || !token || !failing.length) {
  console.error("estate.mjs: STATUS_ESTATE_URL, STATUS_ESTATE_FAILING and HEALTHD_TOKEN must be set");
  process.exit(2);
}
const origin = new URL(base).origin;
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

// healthd's own count of the requests it answered, by endpoint and status.
async function served() {
  const text = await (await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${token}` } })).text();
  const counts = {};
  for (const [, endpoint, status, count] of text.matchAll(/^healthd_http_requests_total\{endpoint="([^"]+)",status="([^"]+)"\} (\d+)$/gm)) {
    counts[`${endpoint} ${status}`] = Number(count);
  }
  return counts;
}

function sum(counts, keep) {
  return Object.entries(counts).filter(([key]) => keep(key)).reduce((total, [, count]) => total + count, 0);
}

const report = await (await fetch(`${base}/health`, { headers: { Authorization: `Bearer ${token}` } })).json();
const estateSize = new Set(Object.values(report.checks ?? {}).flatMap((results) => results.map((r) => r.componentId))).size;

async function rows(page) {
  return page.locator("li.check").evaluateAll((items) => items.map((item) => [item.dataset.check, item.dataset.status]));
}

async function axe(page, problems, when) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const { violations } = await axe.run(document, { resultTypes: ["violations"] });
    return violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
  });
  for (const v of result) console.log(`axe (${when}): ${v.impact} ${v.id}: ${v.help} (${v.nodes} nodes)`);
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) problems.push(`axe (${when}): ${bad.map((v) => `${v.impact} ${v.id}`).join(", ")}`);
  return result.length;
}

await inBrowser({ label: "status-estate", timeout: TIMEOUT, screenshot }, async (page, problems) => {
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));
  // Counts each refresh the page finishes (its "Updated ..." line).
  await page.addInitScript(() => {
    window.__refreshes = 0;
    document.addEventListener("DOMContentLoaded", () => {
      new MutationObserver(() => { window.__refreshes += 1; }).observe(document.getElementById("updated"), { childList: true, characterData: true, subtree: true });
    });
  });

  const response = await page.goto(`${base}/status`, { waitUntil: "load" });
  if (!response || response.status() !== 200) throw new Error(`GET /status answered ${response?.status()}`);
  await page.locator("#token").waitFor({ state: "visible" });
  await page.locator("#token").fill(token);
  await page.locator("#token-form button[type=submit]").click();
  await page.waitForFunction((size) => document.querySelectorAll("li.check").length === size, PAGE_SIZE);

  // Failing first, then warning, then passing, each in configured order.
  const shown = await rows(page);
  const expected = [...failing.map((name) => [name, "fail"]), ...warning.map((name) => [name, "warn"])];
  const head = shown.slice(0, expected.length);
  if (JSON.stringify(head) !== JSON.stringify(expected)) {
    throw new Error(`the page starts with ${JSON.stringify(head.slice(0, 5))}..., expected ${JSON.stringify(expected.slice(0, 5))}...`);
  }
  const rest = shown.slice(expected.length);
  if (rest.some(([, status]) => status !== "pass")) throw new Error(`after the failing and warning checks: ${JSON.stringify(rest)}`);
  const counts = await page.locator("#counts").innerText();
  const range = await page.locator("#range").innerText();
  if (!counts.includes(`${estateSize.toLocaleString("en")} checks`) || !counts.includes(`${failing.length} failing`) || !counts.includes(`${warning.length} warning`)) {
    throw new Error(`the counts read "${counts}"`);
  }
  if (range !== `1–${PAGE_SIZE} of ${estateSize.toLocaleString("en")}`) throw new Error(`the range reads "${range}"`);
  const firstRow = page.locator("li.check").first();
  const days = await firstRow.locator("svg.days rect").count();
  const windows = await firstRow.locator("table.times tbody tr").count();
  if (days !== 90 || windows !== 3) throw new Error(`a row has ${days} day marks and ${windows} windows, not 90 and 3`);
  console.log(`order: ${failing.length} failing, ${warning.length} warning, then passing, of ${estateSize}; "${counts}"; "${range}"`);

  // One request per refresh, by the browser's count and by healthd's.
  const before = await served();
  const requestsBefore = requests.length;
  const refreshesBefore = await page.evaluate(() => window.__refreshes);
  await page.waitForFunction((count) => window.__refreshes >= count, refreshesBefore + REFRESHES, { timeout: TIMEOUT });
  const refreshesAfter = await page.evaluate(() => window.__refreshes);
  const during = requests.slice(requestsBefore);
  const after = await served();
  const refreshes = refreshesAfter - refreshesBefore;
  const delta = (keep) => sum(after, keep) - sum(before, keep);
  const pageRequests = delta((key) => key.startsWith("health_page "));
  const others = delta((key) => !key.startsWith("health_page ") && !key.startsWith("metrics "));
  const notModified = delta((key) => key === "health_page 304");
  const browserOthers = during.filter((url) => !new URL(url).pathname.endsWith("/health/page"));
  // A refresh may be under way as either count is read: one off, at most.
  if (Math.abs(during.length - refreshes) > 1) problems.push(`${during.length} requests for ${refreshes} refreshes (browser's count)`);
  if (Math.abs(pageRequests - refreshes) > 1) problems.push(`healthd answered ${pageRequests} health/page requests for ${refreshes} refreshes`);
  if (others !== 0 || browserOthers.length) problems.push(`other requests during refreshes: healthd ${others}, browser ${browserOthers.join(" ")}`);
  console.log(`refreshes: ${refreshes}; requests: browser ${during.length}, healthd ${pageRequests} to health/page (${notModified} answered 304), ${others} to anything else`);

  // A 304 comes once the store has nothing new (its roll-ups are written every minute).
  let total304 = sum(after, (key) => key === "health_page 304");
  const waitedFrom = Date.now();
  while (total304 === 0) {
    if (Date.now() - waitedFrom > 2 * TIMEOUT) throw new Error("no refresh was answered 304 within two minutes");
    await page.waitForTimeout(1000);
    total304 = sum(await served(), (key) => key === "health_page 304");
  }
  console.log(`304 answers so far: ${total304}`);

  // The filter asks healthd, and shows only what matches.
  const needle = failing[0].slice(0, -1);
  await page.locator("#filter").fill(needle);
  await page.waitForFunction((text) => {
    const items = [...document.querySelectorAll("li.check")];
    return items.length > 0 && items.every((item) => item.dataset.check.includes(text));
  }, needle);
  const filtered = await rows(page);
  if (filtered[0][0] !== failing[0] || filtered[0][1] !== "fail") throw new Error(`filtered on ${needle}, the first row is ${filtered[0]}`);
  console.log(`filter "${needle}": ${filtered.length} rows, ${await page.locator("#range").innerText()}`);
  await page.locator("#filter").fill("");
  await page.waitForFunction((size) => document.querySelectorAll("li.check").length === size && document.querySelector("li.check").dataset.status === "fail", PAGE_SIZE);

  // The pager: the next page holds passing checks only.
  await page.locator("#next").click();
  await page.waitForFunction((size) => document.querySelector("#range").textContent.startsWith(`${size + 1}–`), PAGE_SIZE);
  const second = await rows(page);
  if (second.some(([, status]) => status !== "pass")) throw new Error(`page 2 holds ${JSON.stringify(second.filter(([, s]) => s !== "pass"))}`);
  await page.locator("#previous").click();
  await page.waitForFunction(() => document.querySelector("#range").textContent.startsWith("1–"));

  // A row's incidents, on demand.
  const incidentsBefore = requests.filter((url) => url.includes("/incidents")).length;
  await page.locator("li.check").first().locator("details.incidents summary").click();
  await page.locator("li.check").first().locator(".incident-list li[data-to=fail]").first().waitFor();
  const incidentRequests = requests.filter((url) => url.includes("/incidents")).length - incidentsBefore;
  if (incidentRequests !== 1) problems.push(`opening a row's incidents made ${incidentRequests} requests`);
  const incident = await page.locator("li.check").first().locator(".incident-list li").first().innerText();
  console.log(`incidents of ${failing[0]}: "${incident}"`);

  const desktop = await axe(page, problems, "desktop");
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(`screenshot: ${screenshot}`);
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) problems.push(`on a 390 px wide screen the page is ${overflow} px too wide`);
  const phone = await axe(page, problems, "phone");

  const foreign = [...new Set(requests.filter((url) => !url.startsWith("data:") && new URL(url).origin !== origin))];
  if (foreign.length) problems.push(`requests to other origins: ${foreign.join(", ")}`);
  return (
    `${estateSize} checks: failing then warning first, ${refreshes} refreshes = ${pageRequests} requests ` +
    `(healthd's count; ${total304} answered 304 so far), filter, pager and incidents work, ` +
    `axe: no serious or critical (${desktop} + ${phone} minor findings)`
  );
});
