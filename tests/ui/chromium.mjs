// Debian's Chromium, headless, in a profile of its own that goes when it closes: what every
// browser test here drives through playwright-core (no browser download).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
];

// -> {context, close}; `args` are added to ARGS, the other options go to playwright as they are.
export async function launch(executablePath, { args = [], ...options } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "mpegflow-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [...ARGS, ...args],
    ...options,
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
