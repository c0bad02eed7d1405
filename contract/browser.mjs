// What the browser stage's scripts (swagger.mjs, status.mjs) share: Debian's
// headless Chromium, driven by playwright-core (which downloads no browser
// of its own), in a throwaway profile, with a page that collects script
// errors, and one way to end: a summary line, or a screenshot of the failure
// and a FAILED line with exit code 1.
//
// Environment: CHROMIUM (default /usr/bin/chromium).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

/**
 * Opens a page and runs `test(page, problems)` on it. `test` pushes what is
 * wrong but need not stop it to `problems` (script errors land there too),
 * throws on what must, and returns the summary. Prints `${label}: summary`
 * when it returns and `problems` stays empty; otherwise saves a screenshot
 * to `screenshot`, prints `${label}: FAILED: ...` and sets exit code 1.
 * The browser is closed and its profile removed either way.
 */
export async function inBrowser({ label, timeout, screenshot }, test) {
  const profile = mkdtempSync(join(tmpdir(), `healthd-${label}-`));
  const problems = [];
  let context;
  let page;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      headless: true,
      // Without the background-networking flags Chromium tries to reach
      // Google's services at every start; this machine has no internet.
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1280, height: 900 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(timeout);
    page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") console.log(`console error: ${message.text()}`);
    });
    const summary = await test(page, problems);
    if (problems.length) throw new Error(problems.join("; "));
    console.log(`${label}: ${summary}`);
  } catch (error) {
    // A screenshot of the failure helps more than none.
    if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    console.error(`${label}: FAILED: ${error instanceof Error ? error.message : error}`);
    process.exitCode = 1;
  } finally {
    await context?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}
