/**
 * llama.cpp as the bench's peer (`tokenmill bench --peer llama.cpp`): the same prompts (token
 * ids), lengths and concurrency through node-llama-cpp, on a GGUF of the same checkpoint
 * (gguf-writer.ts). It runs in a child process of its own, with UV_THREADPOOL_SIZE=1 (on few
 * cores node-llama-cpp's default pool competes with its own threads), so the two sides never
 * share a process or run at once.
 *
 * node-llama-cpp is installed on first use into the cache (.cache/peers/), from the npm registry,
 * at a pinned version: not as a dependency, because its package lists a prebuilt binary for
 * every platform as an optional dependency, and a registry mirror that carries only this
 * platform's (as this project's does) leaves package-lock.json unable to satisfy `npm ci`.
 * `npm start` never loads it, and the bundle doesn't carry it.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { cacheDir } from "../models/cache-dir.ts";

/** The node-llama-cpp version the peer runs (3.x: a prebuilt CPU binary for Linux x64). */
export const NODE_LLAMA_CPP_VERSION = "3.22.1";

/** node-llama-cpp's folder in the cache, installed (npm install, scripts off) when missing. */
export function ensureNodeLlamaCpp(): string {
  const prefix = cacheDir("peers", `node-llama-cpp-${NODE_LLAMA_CPP_VERSION}`);
  const pkg = join(prefix, "node_modules", "node-llama-cpp");
  if (existsSync(join(pkg, "package.json"))) return pkg;
  mkdirSync(prefix, { recursive: true });
  console.error(`installing node-llama-cpp ${NODE_LLAMA_CPP_VERSION} into ${prefix} (once)`);
  // NOTE: only this platform's CPU binary (85 MB here, where every variant, CUDA's included, is 725 MB).
  const binaries: Record<string, string> = { "linux-x64": "linux-x64", "linux-arm64": "linux-arm64", "darwin-arm64": "mac-arm64-metal", "darwin-x64": "mac-x64", "win32-x64": "win-x64" };
  const binary = binaries[`${process.platform}-${process.arch}`];
  const packages = binary ? ["--omit=optional", `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`, `@node-llama-cpp/${binary}@${NODE_LLAMA_CPP_VERSION}`] : [`node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`];
  const npm = spawnSync("npm", ["install", "--prefix", prefix, "--no-save", "--ignore-scripts", "--no-audit", "--no-fund", ...packages], {
    stdio: ["ignore", "ignore", "pipe"], encoding: "utf8",
  });
  if (npm.status !== 0 || !existsSync(join(pkg, "package.json"))) {
    throw new Error(`could not install node-llama-cpp ${NODE_LLAMA_CPP_VERSION} (npm install exited ${npm.status}): ${(npm.stderr ?? "").trim().split("\n").slice(-2).join(" | ")}`);
  }
  return pkg;
}

/** What the peer uses of node-llama-cpp's API. */
interface LlamaCpp {
  getLlama(options: { gpu: false; build: "never"; logLevel: unknown }): Promise<{ loadModel(o: { modelPath: string }): Promise<LlamaModel> }>;
  LlamaLogLevel: { error: unknown };
}
interface LlamaModel {
  createContext(o: { contextSize: number; sequences: number; threads: number; batchSize: number }): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
interface LlamaContext {
  getSequence(): LlamaSequence;
  dispose(): Promise<void>;
}
interface LlamaSequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], options: { temperature: number }): AsyncIterable<number>;
}

export interface PeerWork {
  gguf: string;
  prompts: number[][];
  outputLens: number[];
  concurrency: number;
  threads: number;
  /** When each request arrives, ms after the start (the load generator's offsets for --request-rate); default all at once. */
  arrivalsMs?: number[];
  /** Greedy tokens of prompts[0] only (the conversion check), instead of the timed run. */
  greedyOf?: number;
}

export interface PeerResult {
  completed: number;
  durationS: number;
  outputTokens: number;
  outputThroughput: number;
  ttftMs: number[];
  /** With greedyOf: the first prompt's greedy tokens. */
  greedy?: number[];
}

/** Runs the work in a child process (node-llama-cpp installed first when missing); rejects with its stderr when it fails. */
export function runLlamaPeer(work: PeerWork): Promise<PeerResult> {
  const pkg = ensureNodeLlamaCpp();
  const self = fileURLToPath(import.meta.url);
  const args = self.endsWith(".ts") ? ["--import", "tsx", self] : [self];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, UV_THREADPOOL_SIZE: "1", TOKENMILL_NODE_LLAMA_CPP: pkg }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code === 0) resolve(JSON.parse(stdout) as PeerResult);
      else reject(new Error(`the llama.cpp peer failed (exit ${code}): ${stderr.trim().split("\n").slice(-3).join(" | ")}`));
    });
    child.stdin!.end(JSON.stringify(work));
  });
}

async function run(work: PeerWork): Promise<PeerResult> {
  const pkg = process.env.TOKENMILL_NODE_LLAMA_CPP!;
  const entry = (JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")) as { main?: string }).main ?? "dist/index.js";
  const llamaCpp = (await import(pathToFileURL(join(pkg, entry)).href)) as LlamaCpp;
  const llama = await llamaCpp.getLlama({ gpu: false, build: "never", logLevel: llamaCpp.LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: work.gguf });
  const longest = Math.max(...work.prompts.map((p, i) => p.length + work.outputLens[i]));
  // NOTE: node-llama-cpp's contextSize is per sequence (the context holds contextSize × sequences cells): room for each at its longest.
  const context = await model.createContext({ contextSize: longest + 16, sequences: work.concurrency, threads: work.threads, batchSize: 512 });
  const sequences = Array.from({ length: work.concurrency }, () => context.getSequence());
  const generate = async (sequence: (typeof sequences)[number], prompt: number[], n: number, onFirst: () => void): Promise<number[]> => {
    await sequence.clearHistory();
    const tokens: number[] = [];
    for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
      if (tokens.length === 0) onFirst();
      tokens.push(token);
      if (tokens.length >= n) break;
    }
    return tokens;
  };
  if (work.greedyOf !== undefined) {
    const greedy = await generate(sequences[0], work.prompts[0], work.greedyOf, () => {});
    return { completed: 1, durationS: 0, outputTokens: greedy.length, outputThroughput: 0, ttftMs: [], greedy };
  }
  const ttftMs: number[] = [];
  let next = 0;
  let outputTokens = 0;
  const started = performance.now();
  await Promise.all(sequences.map(async (sequence) => {
    for (let i = next++; i < work.prompts.length; i = next++) {
      const wait = started + (work.arrivalsMs?.[i] ?? 0) - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const sent = performance.now();
      const tokens = await generate(sequence, work.prompts[i], work.outputLens[i], () => ttftMs.push(performance.now() - sent));
      outputTokens += tokens.length;
    }
  }));
  const durationS = (performance.now() - started) / 1000;
  await context.dispose();
  await model.dispose();
  return { completed: work.prompts.length, durationS, outputTokens, outputThroughput: outputTokens / durationS, ttftMs };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  let input = "";
  process.stdin.setEncoding("utf8");
  for await (const chunk of process.stdin) input += chunk;
  run(JSON.parse(input) as PeerWork).then(
    (result) => {
      process.stdout.write(JSON.stringify(result));
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
