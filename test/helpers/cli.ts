/** Runs the tokenmill command line as a user would, and returns stdout, stderr and the exit code. */
import { spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export function runCli(args: string[]): { stdout: string; stderr: string; status: number | null } {
  const result = spawnSync(process.execPath, ["--import", "tsx", "bin/tokenmill.ts", ...args], {
    cwd: ROOT, encoding: "utf8", timeout: 120_000, env: { ...process.env, FORCE_COLOR: "0" },
  });
  return { stdout: result.stdout, stderr: result.stderr, status: result.status };
}

export function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** As runCli, without blocking this process (needed when this process serves the CLI's requests). */
export function runCliAsync(args: string[]): Promise<{ stdout: string; stderr: string; status: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bin/tokenmill.ts", ...args], {
      cwd: ROOT, env: { ...process.env, FORCE_COLOR: "0" }, timeout: 120_000,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (status) => resolve({ stdout, stderr, status }));
  });
}
