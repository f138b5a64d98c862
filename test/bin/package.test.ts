/** What `npm ci` installs keeps package.json's promise: every locked package runs on the oldest Node it names. */
import { readFileSync } from "node:fs";
import semver from "semver";
import { describe, expect, it } from "vitest";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(new URL("../../package-lock.json", import.meta.url), "utf8")) as {
  packages: Record<string, { version?: string; engines?: { node?: string } | string[]; dev?: boolean }>;
};

describe("package-lock.json", () => {
  it("holds no package that needs a newer Node than package.json's engines (npm ci would warn EBADENGINE)", () => {
    const oldest = semver.minVersion(pkg.engines.node)!.version;
    const tooNew = Object.entries(lock.packages)
      .filter(([path, entry]) => path !== "" && !Array.isArray(entry.engines) && entry.engines?.node)
      .filter(([, entry]) => !semver.satisfies(oldest, (entry.engines as { node: string }).node))
      .map(([path, entry]) => `${path}@${entry.version} needs node ${(entry.engines as { node: string }).node}`);
    expect(tooNew).toEqual([]);
  });
});

describe("docker-compose.yml", () => {
  it("publishes the API on the host's loopback only (it has no key by default)", () => {
    const compose = readFileSync(new URL("../../docker-compose.yml", import.meta.url), "utf8");
    const published = compose.split("\n").filter((line) => /^\s*-\s*"[\d.:]*8000:8000"/.test(line));
    expect(published).toEqual(['      - "127.0.0.1:8000:8000"']);
  });
});
