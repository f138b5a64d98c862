/**
 * promtool (Debian's prometheus package), for the tests that lint metrics, Prometheus configs
 * and PromQL. Never skipped: a missing promtool fails the test with what to install, as a
 * missing PostgreSQL does (.ci/run installs both).
 */
import { spawnSync } from "node:child_process";

export function promtool(): string {
  const path = spawnSync("sh", ["-c", "command -v promtool"], { encoding: "utf8" }).stdout.trim();
  if (!path) throw new Error("promtool is not installed: apt-get install prometheus (as .ci/run does)");
  return path;
}
