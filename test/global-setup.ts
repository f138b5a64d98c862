/** Builds the default model and its graph once, before test files run in parallel. */
import { ensureGraph } from "../models/build-graph.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";

export default function setup(): void {
  ensureGraph(ensureDefaultModel());
}
