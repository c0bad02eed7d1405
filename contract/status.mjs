// The browser stage of contract/run.sh, second half: the status page
// (/status) as a person on call uses it.
//
// Opens $HEALTHD_URL/status in Debian's headless Chromium (driven by
// playwright-core) and asserts that
//   - without a token it shows the overall status in words and asks for a
//     token, and no check;
//   - with $HEALTHD_TOKEN typed in, it lists every check GET /health names
//     (with the token), and $STATUS_FAILING_CHECK reads `fail` in its row
//     and in the latest mark of its strip (this healthd keeps no store: the
//     strip shows the runs kept in memory);
//   - the token is in sessionStorage only (not localStorage, not a cookie);
//   - every request the page makes goes to healthd, and there is no script
//     error;
//   - axe-core (from npm, pinned in package-lock.json, injected inline)
//     reports no serious or critical violation, on a desktop and on a
//     phone-sized screen, where nothing overflows sideways.
// It saves screenshots to $STATUS_SCREENSHOT (desktop) and, next to it,
// status-phone.png.
//
// Environment: HEALTHD_URL, HEALTHD_TOKEN (required), STATUS_FAILING_CHECK
// (default "broken"), STATUS_SCREENSHOT, CHROMIUM (default /usr/bin/chromium).

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { inBrowser } from "./browser.mjs";

const base = (process.env.HEALTHD_URL ?? "").replace(/\/+$/, "");
const token = process.env.HEALTHD_TOKEN ?? "";
const failing = process.env.STATUS_FAILING_CHECK || "broken";
const screenshot = process.env.STATUS_SCREENSHOT ?? "status.png";
const phoneShot = join(dirname(screenshot), "status-phone.png");
// Generous: the page refreshes every 5 s, and the machine may be busy.
const TIMEOUT = 30_000;

if (!base || !token) {
  console.error("status.mjs: HEALTHD_URL and HEALTHD_TOKEN must be set");
  process.exit(2);
}
const origin = new URL(base).origin;
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

// The checks the page must list: what /health shows with the token.
const report = await (await fetch(`${base}/health`, { headers: { Authorization: `Bearer ${token}` } })).json();
const expected = [...new Set(Object.values(report.checks ?? {}).flatMap((results) => results.map((r) => r.componentId)))].sort();
if (!expected.includes(failing)) {
  console.error(`status.mjs: GET /health does not list the check ${failing} (it lists: ${expected.join(", ")})`);
  process.exit(2);
}

const requests = [];

async function axe(page, problems, when) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const { violations } = await axe.run(document, { resultTypes: ["violations"] });
    return violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result) console.log(`axe (${when}): ${v.impact} ${v.id}: ${v.help} (${v.nodes} nodes)`);
  if (bad.length) problems.push(`axe (${when}): ${bad.map((v) => `${v.impact} ${v.id}`).join(", ")}`);
  return result.length;
}

await inBrowser({ label: "status-page", timeout: TIMEOUT, screenshot }, async (page, problems) => {
  page.on("request", (request) => requests.push(request.url()));

  const response = await page.goto(`${base}/status`, { waitUntil: "load" });
  if (!response || response.status() !== 200) throw new Error(`GET /status answered ${response?.status()}`);

  // Anonymous: the overall status in words, a token field, no check.
  const overall = page.locator("#overall .word");
  await page.waitForFunction(() => ["pass", "warn", "fail"].includes(document.querySelector("#overall .word")?.textContent));
  const anonymousStatus = await overall.textContent();
  await page.locator("#token").waitFor({ state: "visible" });
  if ((await page.locator("li.check").count()) !== 0) throw new Error("checks are shown without a token");
  console.log(`anonymous: overall ${anonymousStatus}, token field shown, no check listed`);

  // With the token: every check, the failing one reads fail.
  await page.locator("#token").fill(token);
  await page.locator("#token-form button[type=submit]").click();
  await page.waitForFunction((count) => document.querySelectorAll("li.check").length === count, expected.length);
  const listed = (await page.locator("li.check").evaluateAll((rows) => rows.map((row) => row.dataset.check))).sort();
  if (JSON.stringify(listed) !== JSON.stringify(expected)) {
    throw new Error(`the page lists ${listed.join(", ")}, /health has ${expected.join(", ")}`);
  }
  const row = page.locator(`li.check[data-check="${failing}"]`);
  await page.waitForFunction(
    (name) => document.querySelector(`li.check[data-check="${name}"] .strip rect:last-of-type`)?.dataset.status === "fail",
    failing,
  );
  const word = (await row.locator('[data-role="status"]').innerText()).replace(/[^a-z]/g, "");
  const mark = await row.locator(".strip rect").last().locator("title").textContent();
  const stripLabel = await row.locator("svg.strip").getAttribute("aria-label");
  const output = await row.locator(".output").textContent();
  if (word !== "fail") throw new Error(`${failing}'s row reads "${word}", not fail`);
  if (!/: fail\b/.test(mark ?? "")) throw new Error(`${failing}'s latest mark reads "${mark}"`);
  if (!/latest fail$/.test(stripLabel ?? "")) throw new Error(`${failing}'s strip is labelled "${stripLabel}"`);
  console.log(`with token: ${listed.length} checks listed (${listed.join(", ")}); ${failing} reads ${word}, output "${output}", latest mark "${mark}"`);

  const storage = await page.evaluate((key) => ({
    session: sessionStorage.getItem(key),
    local: localStorage.length,
    cookie: document.cookie,
  }), "healthd.status.token");
  if (storage.session !== token) problems.push("the token is not in sessionStorage");
  if (storage.local !== 0 || storage.cookie !== "") problems.push("the page stored something outside sessionStorage");

  // A refresh comes by itself (one request, to health/page), and the page
  // stays the same shape.
  const before = requests.filter((url) => new URL(url).pathname.endsWith("/health/page")).length;
  await page.waitForFunction(
    ([count]) => performance.getEntriesByType("resource").filter((entry) => new URL(entry.name).pathname.endsWith("/health/page")).length > count,
    [before],
  );
  await page.waitForFunction((count) => document.querySelectorAll("li.check").length === count, expected.length);

  const desktopFindings = await axe(page, problems, "desktop");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) problems.push(`on a 390 px wide screen the page is ${overflow} px too wide`);
  const phoneFindings = await axe(page, problems, "phone");
  await page.screenshot({ path: phoneShot, fullPage: true });
  console.log(`screenshot: ${phoneShot}`);

  const foreign = [...new Set(requests.filter((url) => !url.startsWith("data:") && new URL(url).origin !== origin))];
  if (foreign.length) problems.push(`requests to other origins: ${foreign.join(", ")}`);
  const paths = [...new Set(requests.map((url) => new URL(url).pathname))].sort();
  console.log(`requests: ${requests.length}, all to ${origin}: ${paths.join(" ")}`);
  return (
    `${listed.length} checks listed with the token, ${failing} reads fail, ` +
    `${requests.length} requests all to healthd, axe: no serious or critical ` +
    `(${desktopFindings} + ${phoneFindings} minor findings)`
  );
});
