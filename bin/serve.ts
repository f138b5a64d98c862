/** `tokenmill serve`: the OpenAI-compatible HTTP API. */
import { parseArgs } from "node:util";
import { parseBytes } from "../engine/index.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { startServer } from "../server/serve.ts";
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, engineOptionsFrom, modelDirFrom, positiveInt } from "./engine-flags.ts";

export const SERVE_HELP = `tokenmill serve [options]
Server:
  --host HOST                   address to listen on (env HOST; default 127.0.0.1)
  --port N                      port (env PORT; default 8000)
  --served-model-name NAME      the model id clients send (default: the model folder's name)
  --max-queued-requests N       sequences that may wait beyond --max-num-seqs before 503 (default 1024)
  --shutdown-timeout SECONDS    on SIGTERM, how long in-flight requests may finish (default 30)
  --max-body-size SIZE          largest request body (default 8MiB)
  --tokenizer-threads N         tokenizer worker threads (default: spare cores, at most 4)
  --tool-call-parser P          auto, hermes or none: parse tool calls out of the output
                                (auto: hermes when the chat template writes <tool_call>, as Qwen's do)
  --api-key KEY                 require Authorization: Bearer KEY on the API (repeatable; env TOKENMILL_API_KEY)
  --log-level LEVEL             fatal, error, warn, info, debug, trace or silent (default info)
${ENGINE_FLAGS_HELP}`;

export async function serveCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...ENGINE_FLAGS,
      host: { type: "string", default: process.env.HOST ?? "127.0.0.1" },
      port: { type: "string", default: process.env.PORT ?? "8000" },
      "served-model-name": { type: "string" },
      "max-queued-requests": { type: "string", default: "1024" },
      "shutdown-timeout": { type: "string", default: "30" },
      "max-body-size": { type: "string", default: "8MiB" },
      "tokenizer-threads": { type: "string" },
      "tool-call-parser": { type: "string", default: "auto" },
      "log-level": { type: "string", default: "info" },
      "api-key": { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void console.log(SERVE_HELP);
  const checkpoint = readCheckpoint(modelDirFrom(values));
  const engineOptions = engineOptionsFrom(values, checkpoint);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be 0-65535, got ${values.port}`);
  const server = await startServer({
    engineOptions,
    modelId: values["served-model-name"] ?? checkpoint.name,
    maxModelLen: Math.min(engineOptions.maxModelLen ?? checkpoint.config.maxPositionEmbeddings, checkpoint.config.maxPositionEmbeddings),
    vocabSize: checkpoint.config.vocabSize,
    defaults: checkpoint.generationDefaults,
    host: values.host,
    port,
    maxQueuedRequests: Number(values["max-queued-requests"]),
    shutdownTimeoutMs: Number(values["shutdown-timeout"]) * 1000,
    bodyLimitBytes: parseBytes(values["max-body-size"]),
    tokenizerThreads: values["tokenizer-threads"] === undefined ? undefined : positiveInt(values["tokenizer-threads"], "--tokenizer-threads"),
    toolCallParser: toolCallParserFor(values["tool-call-parser"], checkpoint.chatTemplate),
    apiKeys: values["api-key"] ?? (process.env.TOKENMILL_API_KEY ? [process.env.TOKENMILL_API_KEY] : []),
    logger: { level: values["log-level"] },
  });
  server.app.log.info(`serving ${checkpoint.dir} as "${server.ctx.modelId}" at ${server.url}/v1 (loading the model...)`);
  server.ready.catch(() => process.exit(1));
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.once(signal, () => {
      server.app.log.info({ signal }, "draining: no new requests; finishing in-flight ones");
      void server.close().then(() => process.exit(0));
    });
  }
}

function toolCallParserFor(choice: string, chatTemplate: string | null): "hermes" | undefined {
  if (choice === "hermes") return "hermes";
  if (choice === "none") return undefined;
  if (choice !== "auto") throw new Error(`--tool-call-parser must be auto, hermes or none, got ${choice}`);
  return chatTemplate?.includes("<tool_call>") ? "hermes" : undefined;
}
