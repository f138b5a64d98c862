/** `npm start` as a user runs it: PORT/HOST from the environment, /health, and a graceful drain on SIGTERM. */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { freePort } from "../helpers/free-port.ts";
import { until } from "../helpers/until.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

async function waitForHealth(url: string, timeoutMs: number): Promise<number[]> {
  const seen: number[] = [];
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const status = await fetch(`${url}/health`).then((r) => r.status, () => 0);
    if (seen.at(-1) !== status) seen.push(status);
    if (status === 200) return seen;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`server not healthy after ${timeoutMs} ms; saw ${seen.join(", ")}`);
}

interface Started {
  child: ChildProcess;
  url: string;
  exited: Promise<number | null>;
  stderr: () => string;
}

/** Starts the server as `command args...` with PORT and HOST set, and waits until /health is 200. */
async function startServing(command: string, args: string[]): Promise<Started> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const dataDir = mkdtempSync(join(tmpdir(), "tokenmill-data-"));
  const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", TOKENMILL_DATA_DIR: dataDir }, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const seen = await waitForHealth(url, 60_000);
  expect(seen.at(-1)).toBe(200);
  return { child, url, exited, stderr: () => stderr };
}

/** Opens a streamed chat completion and returns a reader with the first bytes already read. */
async function openStream(url: string, maxTokens: number): Promise<{ rest: () => Promise<string>; first: string }> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "tokenmill-tiny-qwen3", messages: [{ role: "user", content: "count" }], max_tokens: maxTokens, ignore_eos: true, stream: true }),
  });
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  const first = decoder.decode((await reader.read()).value);
  const rest = async () => {
    let body = first;
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) body += decoder.decode(chunk.value);
    return body;
  };
  return { first, rest };
}

const SERVE = [process.execPath, ["--import", "tsx", "bin/tokenmill.ts", "serve", "--kv-cache-memory", "256MiB", "--log-level", "warn"]] as const;

describe("tokenmill serve", () => {
  it("listens on PORT and HOST, and on SIGTERM finishes in-flight streams, refuses new work and exits 0", async () => {
    const { child, url, exited, stderr } = await startServing(SERVE[0], [...SERVE[1]]);
    try {
      const stream = await openStream(url, 150);
      child.kill("SIGTERM");
      const health = () => fetch(`${url}/health`).then((r) => r.status, () => "refused");
      await until(async () => (await health()) !== 200, { everyMs: 25, what: "the server to stop answering /health with 200" });
      expect([503, "refused"]).toContain(await health());
      const body = await stream.rest();
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(body).toContain('"finish_reason":"length"');
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
    expect(stderr()).not.toMatch(/Error/);
  });

  it("ends a stream cut off by --shutdown-timeout with an error event, never as a finished one", async () => {
    const { child, url, exited } = await startServing(SERVE[0], [...SERVE[1], "--shutdown-timeout", "1"]);
    try {
      const stream = await openStream(url, 4000);
      await new Promise((r) => setTimeout(r, 500));
      child.kill("SIGTERM");
      const body = await stream.rest();
      const events = body.split("\n\n").filter(Boolean);
      expect(events.at(-1)).toMatch(/^data: \{"error":\{.*"type":"server_error".*"code":"server_shutting_down"\}\}$/);
      expect(body).not.toContain("[DONE]");
      expect(body).not.toMatch(/"finish_reason":"(stop|length)"/);
      expect(events.length).toBeGreaterThan(10);
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("`npm start` passes SIGTERM on to the server, which drains and exits 0", async () => {
    const { child, url, exited } = await startServing("npm", ["start", "--", "--kv-cache-memory", "256MiB", "--log-level", "warn"]);
    try {
      const stream = await openStream(url, 150);
      child.kill("SIGTERM");
      const body = await stream.rest();
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(body).toContain('"finish_reason":"length"');
      expect(await exited).toBe(0);
      await new Promise((r) => setTimeout(r, 200));
      expect(await fetch(`${url}/health`).then((r) => r.status, () => "refused")).toBe("refused");
    } finally {
      child.kill("SIGKILL");
    }
  });
});
