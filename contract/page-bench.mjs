// `cargo xtask bench --page`'s browser part: the status page over a large
// estate (the xtask starts healthd with 10,000 checks and a store), in
// Debian's headless Chromium. Measures, over $PAGE_BENCH_LOADS cold loads
// (a new browser profile each, the token already in the tab's session):
//   - first paint (the paint timing "first-contentful-paint") and the time
//     until the first page of checks is drawn (the page's own mark
//     "healthd:checks-drawn"), from navigation start;
//   - the first health/page answer: bytes transferred (headers and body,
//     Resource Timing's transferSize) and how long it took;
// and, on the last load, $PAGE_BENCH_REFRESHES refreshes: each one's
// requests, bytes transferred and status (200 or 304).
// Prints one JSON object on its last line; the xtask writes the table.
//
// Environment: PAGE_BENCH_URL, HEALTHD_TOKEN (required), PAGE_BENCH_LOADS
// (default 5), PAGE_BENCH_REFRESHES (default 6), CHROMIUM.

import { inBrowser } from "./browser.mjs";

const base = (process.env.PAGE_BENCH_URL ?? "").replace(/\/+$/, "");
const token = process.env.HEALTHD_TOKEN ?? "";
const loads = Number(process.env.PAGE_BENCH_LOADS ?? 5);
const refreshes = Number(process.env.PAGE_BENCH_REFRESHES ?? 6);
if (!base || !token) {
  console.error("page-bench.mjs: PAGE_BENCH_URL and HEALTHD_TOKEN must be set");
  process.exit(2);
}

const results = { loads: [], refreshes: [] };

for (let load = 0; load < loads; load += 1) {
  const last = load === loads - 1;
  await inBrowser({ label: `page-bench load ${load + 1}`, timeout: 120_000, screenshot: "/dev/null" }, async (page) => {
    await page.addInitScript((value) => sessionStorage.setItem("healthd.status.token", value), token);
    await page.goto(`${base}/status`, { waitUntil: "load" });
    await page.waitForFunction(() => performance.getEntriesByName("healthd:checks-drawn").length > 0);
    // The rows drawn, then painted: the next frame after the mark.
    const timing = await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => setTimeout(() => {
      const paint = performance.getEntriesByName("first-contentful-paint")[0]?.startTime;
      const drawn = performance.getEntriesByName("healthd:checks-drawn")[0].startTime;
      const data = performance.getEntriesByType("resource").find((entry) => new URL(entry.name).pathname.endsWith("/health/page"));
      done({
        firstPaintMs: paint,
        checksDrawnMs: drawn,
        dataBytes: data.transferSize,
        dataBodyBytes: data.encodedBodySize,
        dataMs: data.responseEnd - data.startTime,
        rows: document.querySelectorAll("li.check").length,
        range: document.getElementById("range").textContent,
      });
    }, 0))));
    results.loads.push(timing);
    if (!last) return "measured";
    const requests = [];
    page.on("response", (response) => requests.push(response));
    // Polled here, where the responses are recorded, with a deadline.
    const deadline = Date.now() + (refreshes + 4) * 5000;
    while (requests.length < refreshes) {
      if (Date.now() > deadline) throw new Error(`${requests.length} refreshes within the deadline, not ${refreshes}`);
      await page.waitForTimeout(500);
    }
    await page.waitForTimeout(500);
    const measured = [];
    for (const response of requests.slice(0, refreshes)) {
      const sizes = await response.request().sizes();
      measured.push({ path: new URL(response.url()).pathname, status: response.status(), bytes: sizes.responseHeadersSize + sizes.responseBodySize });
    }
    results.refreshes = measured;
    return "measured";
  });
}
console.log(JSON.stringify(results));
