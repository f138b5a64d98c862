/** `npm start` as a user runs it: PORT/HOST from the environment, /health, and a graceful drain on SIGTERM. */
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

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

describe("tokenmill serve", () => {
  it("listens on PORT and HOST, and on SIGTERM finishes in-flight streams, refuses new work and exits 0", async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(process.execPath, ["--import", "tsx", "bin/tokenmill.ts", "serve", "--kv-cache-memory", "256MiB", "--log-level", "warn"], {
      cwd: ROOT, env: { ...process.env, PORT: String(port), HOST: "127.0.0.1" }, stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      const seen = await waitForHealth(url, 60_000);
      expect(seen.at(-1)).toBe(200);

      const response = await fetch(`${url}/v1/chat/completions`, {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tokenmill-tiny-qwen3", messages: [{ role: "user", content: "count" }], max_tokens: 150, ignore_eos: true, stream: true }),
      });
      const reader = response.body!.getReader();
      let body = new TextDecoder().decode((await reader.read()).value);
      child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 300));
      const refused = await fetch(`${url}/health`).then((r) => r.status, () => "refused");
      expect([503, "refused"]).toContain(refused);
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) body += new TextDecoder().decode(chunk.value);
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(body).toContain('"finish_reason":"length"');
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
    expect(stderr).not.toMatch(/Error/);
  });
});
