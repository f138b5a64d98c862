/**
 * llama.cpp as the bench's peer (`tokenmill bench --peer llama.cpp`): the same prompts (token
 * ids), lengths and concurrency through node-llama-cpp, on a GGUF of the same checkpoint
 * (gguf-writer.ts). It runs in a child process of its own, with UV_THREADPOOL_SIZE=1 (on few
 * cores node-llama-cpp's default pool competes with its own threads), so the two sides never
 * share a process or run at once.
 *
 * node-llama-cpp is a devDependency: `npm start` never loads it, and the bundle doesn't carry it.
 */
import { spawn } from "node:child_process";
import { fileURLToPath, pathToFileURL } from "node:url";

export interface PeerWork {
  gguf: string;
  prompts: number[][];
  outputLens: number[];
  concurrency: number;
  threads: number;
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

/** Runs the work in a child process; rejects with its stderr when it fails. */
export function runLlamaPeer(work: PeerWork): Promise<PeerResult> {
  const self = fileURLToPath(import.meta.url);
  const args = self.endsWith(".ts") ? ["--import", "tsx", self] : [self];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, UV_THREADPOOL_SIZE: "1" }, stdio: ["pipe", "pipe", "pipe"] });
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
  let llamaCpp: typeof import("node-llama-cpp");
  try {
    llamaCpp = await import("node-llama-cpp");
  } catch {
    throw new Error("node-llama-cpp is not installed (it is a devDependency: run npm ci in the source tree)");
  }
  const llama = await llamaCpp.getLlama({ gpu: false, build: "never", logLevel: llamaCpp.LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: work.gguf });
  const longest = Math.max(...work.prompts.map((p, i) => p.length + work.outputLens[i]));
  // NOTE: the sequences share the context's cells: room for every one at its longest.
  const context = await model.createContext({ contextSize: (longest + 16) * work.concurrency, sequences: work.concurrency, threads: work.threads, batchSize: 512 });
  const sequences = Array.from({ length: work.concurrency }, () => context.getSequence());
  const generate = async (sequence: (typeof sequences)[number], prompt: number[], n: number, onFirst: () => void): Promise<number[]> => {
    await sequence.clearHistory();
    const tokens: number[] = [];
    for await (const token of sequence.evaluate(prompt.map((t) => t as never), { temperature: 0 })) {
      if (tokens.length === 0) onFirst();
      tokens.push(token as number);
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
