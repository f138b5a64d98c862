/** A real tokenmill server on the default model, in this process, on a free port. */
import { DEFAULT_ENGINE_OPTIONS, type Device, type EngineOptions } from "../../engine/index.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { startServer, type RunningServer } from "../../server/serve.ts";

export interface TestServerOverrides {
  device?: Device;
  maxQueuedRequests?: number;
  maxNumSeqs?: number;
  faultInjection?: boolean;
  shutdownTimeoutMs?: number;
  bodyLimitBytes?: number;
  requestTimeoutMs?: number;
  /** The served model name (default: the folder's). */
  modelId?: string;
  db?: Parameters<typeof startServer>[0]["db"];
  adminKeys?: string[];
  apiKeys?: string[];
  logger?: Parameters<typeof startServer>[0]["logger"];
  limits?: Parameters<typeof startServer>[0]["limits"];
  reasoningParser?: "qwen3" | "deepseek_r1";
  /** More engine options (LoRA slots and adapters, say). */
  engineOptions?: Partial<EngineOptions>;
}

export async function startTestServer(overrides: TestServerOverrides = {}): Promise<RunningServer> {
  const checkpoint = readCheckpoint(ensureDefaultModel());
  const server = await startServer({
    models: [{
      name: overrides.modelId ?? checkpoint.name,
      engineOptions: {
        ...DEFAULT_ENGINE_OPTIONS, device: overrides.device ?? DEFAULT_ENGINE_OPTIONS.device, modelDir: checkpoint.dir, kvCacheMemoryBytes: 256 * 1024 ** 2, intraOpThreads: 1,
        maxNumSeqs: overrides.maxNumSeqs ?? 64, faultInjection: overrides.faultInjection, ...overrides.engineOptions,
      },
      defaults: checkpoint.generationDefaults,
      maxQueuedRequests: overrides.maxQueuedRequests ?? 256,
      toolCallParser: "hermes",
      reasoningParser: overrides.reasoningParser,
    }],
    host: "127.0.0.1",
    port: 0,
    shutdownTimeoutMs: overrides.shutdownTimeoutMs ?? 10_000,
    bodyLimitBytes: overrides.bodyLimitBytes ?? 1024 * 1024,
    requestTimeoutMs: overrides.requestTimeoutMs,
    tokenizerThreads: 1,
    logger: overrides.logger,
    db: overrides.db ?? null,
    limits: overrides.limits,
    adminKeys: overrides.adminKeys,
    apiKeys: overrides.apiKeys,
  });
  await server.ready;
  return server;
}
