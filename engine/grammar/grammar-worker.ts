/** The grammar thread: one GrammarCore, driven by the engine thread's messages, in order. */
import { parentPort, workerData } from "node:worker_threads";
import { GrammarCore } from "./grammar-core.ts";
import type { FromGrammar, GrammarWorkerData, ToGrammar } from "./grammar-protocol.ts";
import { GrammarError, isWasmTrap } from "../common/grammar-spec.ts";

const port = parentPort!;
const post = (message: FromGrammar, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

async function main({ tokenizerJson, vocabSize, stopTokenIds }: GrammarWorkerData): Promise<void> {
  const core = await GrammarCore.create(tokenizerJson, vocabSize, stopTokenIds);
  // NOTE: one message at a time, in order: a matcher's advance must follow its open.
  let queue = Promise.resolve();
  port.on("message", (message: ToGrammar) => {
    queue = queue.then(() => handle(core, message));
  });
  post({ op: "ready" });
}

async function handle(core: GrammarCore, message: ToGrammar): Promise<void> {
  if (message.op === "close") return core.close(message.seqKey);
  try {
    if (message.op === "open") {
      const { compileMs, cached } = await core.open(message.seqKey, message.spec);
      post({ op: "opened", id: message.id, compileMs, cached });
    } else {
      const { masks, rejected } = await core.advance(message.rows);
      post({ op: "advanced", id: message.id, masks, rejected }, masks.map((m) => m.buffer as ArrayBuffer));
    }
  } catch (err) {
    const grammar = err instanceof GrammarError;
    const poisoned = grammar ? err.poisoned : isWasmTrap(err);
    post({ op: "failed", id: message.id, message: err instanceof Error ? err.message : String(err), param: grammar ? err.param : null, grammar, poisoned });
  }
}

main(workerData as GrammarWorkerData).catch((err: unknown) => post({ op: "fatal", message: err instanceof Error ? err.message : String(err) }));
