// Piscina's worker entry: registers tsx inside the worker thread, then hands piscina the
// task handler of tokenizer-worker.ts. NOTE: Node 20 does not pass `--import tsx` on to
// worker threads, and piscina needs a file it can import as plain JavaScript.
import { register } from "tsx/esm/api";

register();
const { default: runTokenizerTask } = await import("./tokenizer-worker.ts");

export default runTokenizerTask;
