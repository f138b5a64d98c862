/**
 * Replicas behind a router, on loopback: N `tokenmill serve` replicas of the default model
 * sharing one PostgreSQL ledger, behind a tokenmill router whose provider pools them, loaded
 * with many users of a few long system prompts (`tokenmill bench --shared-prefixes`). For each
 * balance it reports the prefix-cache hit rate summed over the replicas, TTFT, output tok/s,
 * and whether the ledger holds what the clients were sent; beside them, one replica alone
 * (the hit rate one big replica gets); and, with --kill, a replica SIGKILLed mid-run under the
 * prefix balance: the requests that failed and how long the router took to drop it.
 *
 *   node --import tsx bench/replica-routing.ts [--replicas 3] [--policies round-robin,least-loaded,prefix]
 *     [--shared-prefixes 16] [--prefix-len 1024] [--input-len 32] [--output-len 16] [--num-prompts 192]
 *     [--max-concurrency 12] [--kill] [--json FILE]
 *
 * Replicas and router are fresh for each run, so every run starts with cold caches.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { startPostgres } from "./postgres.ts";
import { serveProcess, type Serving } from "./serve-process.ts";
import { tokenmillCommand } from "./self-command.ts";

const { values } = parseArgs({
  options: {
    replicas: { type: "string", default: "3" }, policies: { type: "string", default: "round-robin,least-loaded,prefix" },
    "shared-prefixes": { type: "string", default: "16" }, "prefix-len": { type: "string", default: "1024" }, "input-len": { type: "string", default: "32" },
    "output-len": { type: "string", default: "16" }, "num-prompts": { type: "string", default: "192" }, "max-concurrency": { type: "string", default: "12" },
    kill: { type: "boolean", default: false }, json: { type: "string" },
  },
});
const numReplicas = Number(values.replicas);
const MODEL = "tokenmill-tiny-qwen3";
const scratch = mkdtempSync(join(tmpdir(), "tokenmill-replicas-"));

function serve(args: string[], name: string): Promise<Serving> {
  return serveProcess(args, { name, env: { TOKENMILL_DATA_DIR: join(scratch, name) } });
}

async function stop(servers: Serving[]): Promise<void> {
  for (const s of servers) s.child.kill("SIGTERM");
  await Promise.all(servers.map((s) => s.exited));
}

async function metricSum(url: string, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text().catch(() => "");
  return text.split("\n").filter((l) => l.startsWith(name) && l.includes(labels)).reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

function bench(url: string, file: string): { done: Promise<Record<string, unknown>> } {
  const { command, args, cwd } = tokenmillCommand([
    "bench", "--base-url", url, "--model", MODEL, "--endpoint", "completions", "--num-prompts", values["num-prompts"]!, "--max-concurrency", values["max-concurrency"]!,
    "--shared-prefixes", values["shared-prefixes"]!, "--prefix-len", values["prefix-len"]!, "--input-len", values["input-len"]!, "--output-len", values["output-len"]!,
    "--ignore-eos", "--seed", "1", "--save-result", file,
  ]);
  const child = spawn(command, args, { cwd, stdio: ["ignore", "ignore", "inherit"] });
  return {
    done: new Promise((resolve, reject) => child.on("exit", (code) => {
      try {
        resolve(JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>);
      } catch {
        reject(new Error(`the bench exited ${code} with no result`));
      }
    })),
  };
}

async function ledger(db: string): Promise<{ rows: number; input: number; cached: number; output: number }> {
  const client = new pg.Client({ connectionString: db });
  await client.connect();
  try {
    const { rows } = await client.query<{ rows: string; uncached: string; cached: string; output: string }>(
      "select count(*) as rows, coalesce(sum(uncached_input_tokens), 0) as uncached, coalesce(sum(cached_input_tokens), 0) as cached, coalesce(sum(output_tokens), 0) as output from usage_ledger where status = 'completed'",
    );
    await client.query("delete from usage_ledger");
    const r = rows[0];
    return { rows: Number(r.rows), input: Number(r.uncached) + Number(r.cached), cached: Number(r.cached), output: Number(r.output) };
  } finally {
    await client.end();
  }
}

interface RunResult {
  policy: string;
  hitRate: number;
  meanTtftMs: number;
  p99TtftMs: number;
  outputThroughput: number;
  completed: number;
  failed: number;
  ledgerMatches: boolean;
  ledger: { rows: number; input: number; cached: number; output: number };
  sent: { input: number; output: number };
  killed?: { failed: number; droppedAfterMs: number | null };
}

async function run(policy: string, db: string, kill: boolean): Promise<RunResult> {
  const alone = policy === "one replica";
  const replicas = await Promise.all(Array.from({ length: alone ? 1 : numReplicas }, (_, i) =>
    serve(["--db", db, "--replica-id", `r${i}`, "--kv-cache-memory", "512MiB", "--threads", "1", "--max-num-seqs", "64"], `r${i}`)));
  const servers = [...replicas];
  let target = replicas[0];
  if (!alone) {
    const config = join(scratch, `router-${policy}.yaml`);
    writeFileSync(config, [
      "providers:", "  - name: replicas", `    replicas: [${replicas.map((r) => `${r.url}/v1`).join(", ")}]`, `    balance: ${policy}`,
      "    health-interval: 0.5", "    max-concurrency: 64", "    max-retries: 0", "    breaker-failures: 3", "    breaker-cooldown: 5", `    models: [{ name: ${MODEL} }]`, "",
    ].join("\n"));
    target = await serve(["--config", config, "--db", "none"], "router");
    servers.push(target);
  }
  try {
    const file = join(scratch, `${policy}.json`);
    const running = bench(target.url, file);
    let killed: RunResult["killed"];
    if (kill) {
      // NOTE: a third of the way in (the prompts done so far, from the replicas' own counters), one replica is killed.
      const total = Number(values["num-prompts"]);
      while ((await Promise.all(replicas.map((r) => metricSum(r.url, "tokenmill_http_requests_total", 'route="/v1/completions",status="200"')))).reduce((a, b) => a + b, 0) < total / 3) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const victim = replicas[1];
      const label = new URL(victim.url).host;
      victim.child.kill("SIGKILL");
      const at = performance.now();
      let droppedAfterMs: number | null = null;
      for (let i = 0; i < 300 && droppedAfterMs === null; i++) {
        if ((await metricSum(target.url, "tokenmill_upstream_replica_healthy", `replica="${label}"`)) === 0) droppedAfterMs = performance.now() - at;
        else await new Promise((r) => setTimeout(r, 50));
      }
      killed = { failed: 0, droppedAfterMs };
    }
    const result = await running.done;
    const live = replicas.filter((r) => r.child.exitCode === null && r.child.signalCode === null);
    const hits = (await Promise.all(live.map((r) => metricSum(r.url, "tokenmill_prefix_cache_hits_total")))).reduce((a, b) => a + b, 0);
    const queries = (await Promise.all(live.map((r) => metricSum(r.url, "tokenmill_prefix_cache_queries_total")))).reduce((a, b) => a + b, 0);
    const rows = await ledger(db);
    const sent = { input: Number(result.total_input_tokens), output: Number(result.total_output_tokens) };
    if (killed) killed.failed = Number(result.failed);
    return {
      policy, hitRate: queries > 0 ? hits / queries : 0, meanTtftMs: Number(result.mean_ttft_ms), p99TtftMs: Number(result.p99_ttft_ms),
      outputThroughput: Number(result.output_throughput), completed: Number(result.completed), failed: Number(result.failed),
      ledgerMatches: rows.rows === Number(result.completed) && rows.input === sent.input && rows.output === sent.output,
      ledger: rows, sent, ...(killed ? { killed } : {}),
    };
  } finally {
    await stop(servers.filter((s) => s.child.exitCode === null && s.child.signalCode === null));
  }
}

const postgres = await startPostgres();
const results: RunResult[] = [];
try {
  for (const policy of ["one replica", ...values.policies!.split(",")]) {
    const result = await run(policy, postgres.url, false);
    results.push(result);
    console.error(`${policy}: hit rate ${result.hitRate.toFixed(3)}, TTFT mean ${result.meanTtftMs.toFixed(1)} ms, p99 ${result.p99TtftMs.toFixed(1)} ms, ${result.outputThroughput.toFixed(1)} tok/s`);
  }
  if (values.kill) results.push({ ...(await run("prefix", postgres.url, true)), policy: "prefix, one replica killed" });
} finally {
  postgres.stop();
  rmSync(scratch, { recursive: true, force: true });
}

const f = (x: number, d = 1) => x.toFixed(d);
console.log(`\n${numReplicas} replicas of ${MODEL} on loopback, ${values["shared-prefixes"]} system prompts of ${values["prefix-len"]} tokens, ${values["num-prompts"]} requests of ${values["input-len"]} more tokens in / ${values["output-len"]} out, concurrency ${values["max-concurrency"]}\n`);
console.log("| policy | prefix-cache hit rate | TTFT mean (ms) | TTFT p99 (ms) | output tok/s | completed / failed | ledger = what clients were sent |");
console.log("|---|---:|---:|---:|---:|---:|---|");
for (const r of results) {
  // NOTE: with a replica killed, the clients' totals count the failed requests' prompts, so only rows = completed is asked.
  const ledgerCell = r.ledgerMatches ? `yes (${r.ledger.rows} rows, ${r.ledger.input} in, ${r.ledger.output} out)`
    : r.killed ? `${r.ledger.rows} rows for ${r.completed} completed${r.ledger.rows === r.completed ? " (each completed request has its row)" : ""}`
    : `NO: ${JSON.stringify(r.ledger)} vs ${JSON.stringify(r.sent)}`;
  console.log(`| ${r.policy} | ${f(r.hitRate, 3)} | ${f(r.meanTtftMs)} | ${f(r.p99TtftMs)} | ${f(r.outputThroughput)} | ${r.completed} / ${r.failed} | ${ledgerCell} |`);
}
const one = results.find((r) => r.policy === "one replica");
const rr = results.find((r) => r.policy === "round-robin");
const prefix = results.find((r) => r.policy === "prefix");
if (one && prefix) console.log(`\nprefix hit rate / one replica's: ${f(prefix.hitRate / one.hitRate, 3)}`);
if (rr && prefix) console.log(`TTFT mean, round-robin / prefix: ${f(rr.meanTtftMs / prefix.meanTtftMs, 2)}`);
const killedRun = results.find((r) => r.killed);
if (killedRun?.killed) console.log(`killed mid-run: ${killedRun.killed.failed} requests failed; the router dropped the replica after ${killedRun.killed.droppedAfterMs === null ? "(never)" : `${f(killedRun.killed.droppedAfterMs, 0)} ms`}`);
if (values.json) writeFileSync(values.json, `${JSON.stringify(results, null, 2)}\n`);
