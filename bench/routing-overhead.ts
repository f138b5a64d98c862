/**
 * What routing through an upstream costs: the same workload sent to a tokenmill serving the
 * default model (direct), and to a second tokenmill that serves it as an upstream model
 * (routed: one more HTTP hop, the SSE stream parsed and re-sent, the ledger written). Both are
 * real `tokenmill serve` processes on loopback; the runs alternate, direct then routed, so that
 * the machine's noise falls on both.
 *
 *   node --import tsx bench/routing-overhead.ts [--rounds 3] [--num-prompts 64] [--concurrency 16] [--output-len 32]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";
import { runLoad } from "./load-generator.ts";
import { computeMetrics } from "./metrics.ts";
import { benchTokenizer, buildWorkload } from "./workload.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" }, "num-prompts": { type: "string", default: "64" }, concurrency: { type: "string", default: "16" },
    "input-len": { type: "string", default: "32" }, "output-len": { type: "string", default: "32" },
  },
});
const [rounds, numPrompts, concurrency, inputLen, outputLen] = [values.rounds, values["num-prompts"], values.concurrency, values["input-len"], values["output-len"]].map(Number);

async function serve(port: number, args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", "bin/tokenmill.ts", "serve", "--port", String(port), "--db", "none", "--log-level", "warn", ...args], {
    cwd: ROOT, stdio: ["ignore", "ignore", "inherit"],
  });
  for (let i = 0; i < 1200; i++) {
    if ((await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status, () => 0)) === 200) return child;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the server on ${port} never became healthy`);
}

const checkpoint = readCheckpoint(ensureDefaultModel());
const dir = mkdtempSync(join(tmpdir(), "tokenmill-routing-bench-"));
const config = join(dir, "router.yaml");
const [peerPort, routerPort] = [18431, 18432];
writeFileSync(config, `providers:\n  - name: peer\n    base-url: http://127.0.0.1:${peerPort}/v1\n    max-concurrency: 1024\n    models:\n      - name: remote\n        upstream: ${checkpoint.name}\n`);
const peer = await serve(peerPort, ["--kv-cache-memory", "512MiB", "--max-num-seqs", String(Math.max(concurrency, 16))]);
const router = await serve(routerPort, ["--config", config]);
try {
  const workload = buildWorkload({ numPrompts, inputLen, outputLen, seed: 1 }, benchTokenizer(checkpoint));
  const targets = [
    { name: "direct", baseUrl: `http://127.0.0.1:${peerPort}`, model: checkpoint.name },
    { name: "routed", baseUrl: `http://127.0.0.1:${routerPort}`, model: "remote" },
  ];
  const rows: Record<string, { ttft: number[]; tpot: number[]; throughput: number[] }> = { direct: { ttft: [], tpot: [], throughput: [] }, routed: { ttft: [], tpot: [], throughput: [] } };
  for (let round = 0; round < rounds; round++) {
    for (const target of targets) {
      const run = await runLoad(workload, { ...target, ignoreEos: true, temperature: 0, maxConcurrency: concurrency, warmup: round === 0 ? 4 : 0, progress: false });
      const m = computeMetrics(run.results, run.durationS, { percentiles: [50, 99] });
      if (m.failed > 0) throw new Error(`${target.name}: ${m.failed} requests failed`);
      rows[target.name].ttft.push(m.ttft.medianMs);
      rows[target.name].tpot.push(m.tpot.medianMs);
      rows[target.name].throughput.push(m.outputThroughput);
      console.log(`round ${round + 1} ${target.name}: ${m.outputThroughput.toFixed(1)} tok/s, TTFT median ${m.ttft.medianMs.toFixed(1)} ms, TPOT median ${m.tpot.medianMs.toFixed(2)} ms`);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  console.log(`\n${numPrompts} prompts x ${rounds} rounds, concurrency ${concurrency}, ${inputLen} in / ${outputLen} out (means over rounds):`);
  console.log("| path | output tok/s | TTFT median (ms) | TPOT median (ms) |\n|---|---:|---:|---:|");
  for (const name of ["direct", "routed"]) {
    const r = rows[name];
    console.log(`| ${name} | ${mean(r.throughput).toFixed(1)} | ${mean(r.ttft).toFixed(1)} | ${mean(r.tpot).toFixed(2)} |`);
  }
  console.log(`routed / direct: throughput ${(mean(rows.routed.throughput) / mean(rows.direct.throughput)).toFixed(3)}, TTFT +${(mean(rows.routed.ttft) - mean(rows.direct.ttft)).toFixed(1)} ms`);
} finally {
  router.kill("SIGTERM");
  peer.kill("SIGTERM");
}
