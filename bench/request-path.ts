/**
 * Which source files one streamed chat request runs code in, on every thread: the measure of
 * how far a reader has to follow a request (issue 25's "files a streamed chat crosses").
 *
 * It serves twice, as `npm start` does (SQLite ledger in a scratch folder), under V8's precise
 * coverage (NODE_V8_COVERAGE, call counts, every thread). Both runs send the same warm-up
 * request first, so lazy set-up is not counted; the second run then sends one more streamed
 * chat. A file counts when some function in it was called more often in the second run: the
 * request ran code there. Module bodies and set-up run in both, so they cancel out; timers
 * (stats, metrics) don't always, so the pair of runs is repeated and a file counts only when
 * every repeat finds it.
 *
 *   node --import tsx bench/request-path.ts [--root <a checkout with node_modules>] [--repeats 3] [--json]
 *
 * --root measures another checkout (an older commit in a git worktree, say) with this script.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { freePort } from "./free-port.ts";

const { values } = parseArgs({ options: { root: { type: "string" }, repeats: { type: "string", default: "3" }, json: { type: "boolean", default: false } } });
const ROOT = resolve(values.root ?? fileURLToPath(new URL("..", import.meta.url)));

interface FunctionCoverage { functionName: string; ranges: { startOffset: number; endOffset: number; count: number }[] }
interface ScriptCoverage { url: string; functions: FunctionCoverage[] }


async function streamedChat(url: string, model: string, content: string): Promise<void> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content }], max_tokens: 8, stream: true, stream_options: { include_usage: true } }),
  });
  const body = await response.text();
  if (response.status !== 200 || !body.includes("data: [DONE]")) throw new Error(`the chat failed: ${response.status} ${body.slice(0, 200)}`);
}

/** Serves under coverage, sends the warm-up and `extra` more chats, stops; returns call counts per file (and threads seen) under ROOT. */
async function coveredRun(extra: number): Promise<Map<string, { calls: number; threads: Set<string> }>> {
  const coverage = mkdtempSync(join(tmpdir(), "tokenmill-coverage-"));
  const data = mkdtempSync(join(tmpdir(), "tokenmill-path-data-"));
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", "bin/tokenmill.ts", "serve", "--port", String(port), "--log-level", "warn"], {
    cwd: ROOT, env: { ...process.env, NODE_V8_COVERAGE: coverage, TOKENMILL_DATA_DIR: data }, stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise((done) => child.on("exit", done));
  const url = `http://127.0.0.1:${port}`;
  try {
    let healthy = false;
    for (let i = 0; i < 1200 && !healthy; i++) {
      healthy = (await fetch(`${url}/health`).then((r) => r.status, () => 0)) === 200;
      if (!healthy) await new Promise((r) => setTimeout(r, 100));
    }
    if (!healthy) throw new Error("the server never became healthy");
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
    const model = models.data[0].id;
    await streamedChat(url, model, "Warm up, please.");
    for (let i = 0; i < extra; i++) await streamedChat(url, model, "Tell me a story.");
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
  const files = new Map<string, { calls: number; threads: Set<string> }>();
  for (const name of readdirSync(coverage)) {
    // coverage-<pid>-<time>-<thread>.json: thread 0 is the main thread
    const thread = name.replace(/\.json$/, "").split("-").at(-1)!;
    const { result } = JSON.parse(readFileSync(join(coverage, name), "utf8")) as { result: ScriptCoverage[] };
    for (const script of result) {
      if (!script.url.startsWith("file://")) continue;
      const path = relative(ROOT, fileURLToPath(script.url));
      if (path.startsWith("..") || path.startsWith("node_modules") || !path.endsWith(".ts")) continue;
      const entry = files.get(path) ?? { calls: 0, threads: new Set<string>() };
      // The first range of a function covers all of it: its count is how often it was called.
      for (const fn of script.functions) if (fn.functionName !== "") entry.calls += fn.ranges[0]?.count ?? 0;
      entry.threads.add(thread);
      files.set(path, entry);
    }
  }
  rmSync(coverage, { recursive: true, force: true });
  rmSync(data, { recursive: true, force: true });
  return files;
}

let crossed: string[] | null = null;
for (let i = 0; i < Number(values.repeats); i++) {
  const baseline = await coveredRun(0);
  const withChat = await coveredRun(1);
  const found = [...withChat].filter(([path, { calls }]) => calls > (baseline.get(path)?.calls ?? 0)).map(([path]) => path);
  crossed = crossed === null ? found.sort() : crossed.filter((path) => found.includes(path));
}
crossed ??= [];
if (values.json) {
  console.log(JSON.stringify({ root: ROOT, files: crossed }, null, 2));
} else {
  const byFolder = new Map<string, string[]>();
  for (const path of crossed) {
    const folder = path.split("/").slice(0, -1).join("/") || ".";
    byFolder.set(folder, [...(byFolder.get(folder) ?? []), path.split("/").at(-1)!]);
  }
  console.log(`One streamed chat request runs code in ${crossed.length} files (${ROOT}):`);
  for (const [folder, names] of [...byFolder].sort()) console.log(`  ${folder}/: ${names.join(", ")}`);
}
