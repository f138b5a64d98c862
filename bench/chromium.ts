/**
 * A real headless Chromium for the console's tests and bench/console-load.ts: Debian's
 * `chromium` package (which .ci/run installs) driven by playwright-core, so there is no browser
 * download and nothing from outside the host.
 */
import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"];

export async function launchChromium(): Promise<Browser> {
  const executablePath = process.env.TOKENMILL_CHROMIUM ?? CANDIDATES.find((path) => existsSync(path));
  if (!executablePath) throw new Error("no Chromium found: apt-get install -y chromium (as .ci/run does), or set TOKENMILL_CHROMIUM");
  // NOTE: Chromium's sandbox needs user namespaces, which CI's root containers lack.
  return chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
}
