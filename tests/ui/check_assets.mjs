// Opens asset pages of a running `dagster dev` in Debian's headless Chromium and reports what a
// person sees there, as JSON on stdout (tests/test_ui.py asserts on it); a screenshot of each page
// goes to the output directory.
//
//   node check_assets.mjs <job.json>
//   job: {"ui": "http://127.0.0.1:PORT", "previews": "http://127.0.0.1:PORT", "out": "DIR",
//         "chromium": "/usr/bin/chromium", "pages": [{"name", "path", "picture"?: true,
//         "ready"?: "a regular expression of text the page shows when ready"}]}
//
// A page with "picture" waits until an <img> served from the previews URL has loaded; every page
// reports its status words (Materialized / Failed ...), its visible text and its pictures.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { launch } from "./chromium.mjs";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { context, close } = await launch(job.chromium, {
  args: ["--disable-quic", "--disable-sync"],
  viewport: { width: 1400, height: 1000 },
});
// The "Join the Dagster community" dialog (shown once on a 127.0.0.1 UI) counts as dismissed.
await context.addInitScript(() => {
  window.localStorage.setItem("communityNux", JSON.stringify("1"));
});

const report = {};
try {
  for (const spec of job.pages) {
    const page = await context.newPage();
    const failedRequests = [];
    page.on("requestfailed", (r) => failedRequests.push(r.url()));
    await page.goto(job.ui + spec.path, { waitUntil: "domcontentloaded", timeout: 120000 });
    // The asset page is ready when its partition's status is shown.
    await page
      .getByText(spec.ready ? new RegExp(spec.ready) : /Materialized|Failed|Missing/)
      .first()
      .waitFor({ timeout: 120000 });
    if (spec.picture) {
      await page.waitForFunction(
        (prefix) =>
          [...document.images].some(
            (i) => i.src.startsWith(prefix) && i.complete && i.naturalWidth > 0,
          ),
        job.previews + "/",
        { timeout: 60000 },
      );
    } else {
      await page.waitForTimeout(2000); // let the late panels render before the screenshot
    }
    const skip = page.getByRole("button", { name: "Skip" });
    if (await skip.isVisible()) await skip.click(); // in case the dialog shows all the same
    await page.screenshot({ path: join(job.out, `${spec.name}.png`), fullPage: true });
    report[spec.name] = {
      url: page.url(),
      text: await page.evaluate(() => document.body.innerText),
      images: await page.evaluate(() =>
        [...document.images].map((i) => ({
          src: i.src,
          alt: i.alt,
          complete: i.complete,
          naturalWidth: i.naturalWidth,
          naturalHeight: i.naturalHeight,
        })),
      ),
      failedRequests,
    };
    await page.close();
  }
} finally {
  await close();
}
process.stdout.write(JSON.stringify(report));
