/** `tokenmill serve`: the OpenAI-compatible HTTP API. */
import { parseArgs } from "node:util";
import { readCheckpoint } from "../models/checkpoint.ts";
import { startServer } from "../server/serve.ts";
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, engineOptionsFrom, modelDirFrom, readEngineFlags, type EngineFlagValues, type EngineFlags } from "./engine-flags.ts";
import { readServeConfig, reasoningParserOf, toolCallParserFor, type ModelDefaults, type ServeConfig } from "./serve-config.ts";
import { REASONING_PARSERS } from "../server/openai/reasoning.ts";
import { POOLINGS } from "../engine/index.ts";
import { MODEL_TASKS } from "../server/backends/model-backend.ts";
import { microUsdPerMtok, type Price } from "../service/prices.ts";
import { defaultDbUrl } from "../service/store/open-store.ts";
import type { AuthMode } from "../server/http/auth.ts";
import { DEFAULT_ALERT_THRESHOLDS } from "../service/limits/alerts.ts";
import { NO_LIMITS } from "../service/limits/key-limits.ts";
import { limitFlagOptions, limitFlagsHelp, readLimitFlags } from "./limit-flags.ts";
import { FlagError, bytesFlag, durationFlag, listFlag, dbUrlFlag, enumFlag, flagValue, intFlag, nonEmptyFlag, numberFlag, optionalFlagValue } from "./flags.ts";

export const SERVE_HELP = `tokenmill serve [options]
Server:
  --config FILE                 several local models, upstream providers and routes, in YAML or JSON (see the
                                README's "Models, providers and routing"); the engine flags below are then
                                every local model's defaults
  --host HOST                   address to listen on (env HOST; default 127.0.0.1)
  --port N                      port (env PORT; default 8000)
  --served-model-name NAME      the model id clients send (default: the model folder's name)
  --max-queued-requests N       sequences that may wait beyond --max-num-seqs before 503 (default 1024)
  --shutdown-timeout SECONDS    on SIGTERM, how long in-flight requests may finish (default 30)
  --request-timeout SECONDS     how long a client may take to send a whole request before a 408 (default 60)
  --keep-alive-timeout SECONDS  how long an idle keep-alive connection stays open; keep it above the idle timeout
                                of any proxy or load balancer in front (default 75)
  --max-body-size SIZE          largest request body (default 8MiB)
  --responses-retention T       how long /v1/responses keeps a stored response, e.g. 30d, 12h, 3600 (seconds) (default 30d)
  --batch-concurrency N         requests of a batch job in flight at once, at the batch priority tier (default 8)
  --batch-discount P            the batch tier's discount on prices that set none, percent (default 50)
  --max-batch-file-bytes SIZE   the largest batch input file (default 64MiB); --max-batch-lines N its most requests (default 50000)
  --batch-file-retention T      how long a batch's output and error files are kept (default 30d)
  --batch-lease T               how long a replica holds a batch without renewing before another takes it over (default 15s)
  --tokenizer-threads N         tokenizer worker threads (default: spare cores, at most 4)
  --tool-call-parser P          auto, hermes or none: parse tool calls out of the output
                                (auto: hermes when the chat template writes <tool_call>, as Qwen's do)
  --reasoning-parser P          qwen3, deepseek_r1 or none (default): split <think>...</think> out of the answer
                                into reasoning_content
  --pooling last|mean           how /v1/embeddings pools the final hidden states, then L2-normalizes them
                                (default last: the last token's, as Qwen3-Embedding does)
  --task both|generate|embed    what the model serves: generation and embeddings (default), or one of them
  --api-key KEY                 a static key the API accepts as Authorization: Bearer KEY (repeatable; env TOKENMILL_API_KEY)
  --db URL|none                 keys and usage ledger: sqlite:PATH (default: $TOKENMILL_DATA_DIR/tokenmill.db,
                                data dir .data/) or postgres://... (shared by replicas); none: neither
  --db-sync normal|full         SQLite's synchronous mode under WAL (default normal)
  --no-ledger                   keep the keys, but meter nothing
  --replica-id NAME             this replica's name in the ledger (default: the host name)
  --price MODEL=IN,CACHED,OUT   USD per million tokens: uncached input, cached input, output (repeatable)
  --admin-key KEY               the key for /v1/admin/* (repeatable; env TOKENMILL_ADMIN_KEY); none: the admin API is off
  --require-auth                require a key even before any exists (default: anonymous until the first key)
  --no-auth                     serve anonymously whatever keys exist (usage still metered as "anonymous")
Limits (for keys that set none of their own; see tokenmill keys):
${limitFlagsHelp("default-", "default")}
  --alert-thresholds P,P,...    percent of a key's budget or quota at which an alert fires (default ${DEFAULT_ALERT_THRESHOLDS.join(",")})
  --alert-webhook URL           POST each alert as JSON here (retried with backoff)
  --alert-webhook-secret S      sign it: x-tokenmill-signature: t=UNIX,v1=HMAC-SHA256(S, "UNIX.BODY") in hex
                                (env TOKENMILL_ALERT_WEBHOOK_SECRET; secrets in flags show in npm's banner and ps)
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
      config: { type: "string" },
      "max-queued-requests": { type: "string", default: "1024" },
      "shutdown-timeout": { type: "string", default: "30" },
      "request-timeout": { type: "string", default: "60" },
      "keep-alive-timeout": { type: "string", default: "75" },
      "max-body-size": { type: "string", default: "8MiB" },
      "responses-retention": { type: "string", default: "30d" },
      "batch-concurrency": { type: "string", default: "8" }, "batch-discount": { type: "string", default: "50" },
      "max-batch-file-bytes": { type: "string", default: "64MiB" }, "max-batch-lines": { type: "string", default: "50000" },
      "batch-file-retention": { type: "string", default: "30d" }, "batch-lease": { type: "string", default: "15s" },
      "tokenizer-threads": { type: "string" },
      "tool-call-parser": { type: "string", default: "auto" },
      "reasoning-parser": { type: "string", default: "none" },
      pooling: { type: "string", default: "last" },
      task: { type: "string", default: "both" },
      "log-level": { type: "string", default: "info" },
      "api-key": { type: "string", multiple: true },
      db: { type: "string", default: defaultDbUrl() },
      "db-sync": { type: "string", default: "normal" },
      "no-ledger": { type: "boolean", default: false },
      "replica-id": { type: "string" },
      price: { type: "string", multiple: true },
      "admin-key": { type: "string", multiple: true },
      "require-auth": { type: "boolean", default: false },
      "no-auth": { type: "boolean", default: false },
      ...limitFlagOptions("default-"),
      "alert-thresholds": { type: "string" },
      "alert-webhook": { type: "string" },
      "alert-webhook-secret": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void console.log(SERVE_HELP);
  // NOTE: every flag is checked before the model loads, so a typo fails in a second, not after the load.
  const engineFlags = readEngineFlags(values);
  const server = {
    host: flagValue("host", values.host, nonEmptyFlag),
    port: flagValue("port", values.port, intFlag(0, 65535)),
    servedModelName: optionalFlagValue("served-model-name", values["served-model-name"], nonEmptyFlag),
    maxQueuedRequests: flagValue("max-queued-requests", values["max-queued-requests"], intFlag(0)),
    shutdownTimeoutMs: flagValue("shutdown-timeout", values["shutdown-timeout"], numberFlag(0)) * 1000,
    requestTimeoutMs: flagValue("request-timeout", values["request-timeout"], numberFlag(0, 86_400, { minExclusive: true })) * 1000,
    keepAliveTimeoutMs: flagValue("keep-alive-timeout", values["keep-alive-timeout"], numberFlag(0, 86_400, { minExclusive: true })) * 1000,
    bodyLimitBytes: flagValue("max-body-size", values["max-body-size"], bytesFlag),
    responsesRetentionMs: flagValue("responses-retention", values["responses-retention"], durationFlag),
    batch: {
      concurrency: flagValue("batch-concurrency", values["batch-concurrency"], intFlag(1, 4096)),
      discountPercent: flagValue("batch-discount", values["batch-discount"], intFlag(0, 100)),
      maxFileBytes: flagValue("max-batch-file-bytes", values["max-batch-file-bytes"], bytesFlag),
      maxLines: flagValue("max-batch-lines", values["max-batch-lines"], intFlag(1)),
      fileRetentionMs: flagValue("batch-file-retention", values["batch-file-retention"], durationFlag),
      leaseMs: flagValue("batch-lease", values["batch-lease"], durationFlag),
    },
    tokenizerThreads: optionalFlagValue("tokenizer-threads", values["tokenizer-threads"], intFlag(1, 64)),
    toolCallParser: flagValue("tool-call-parser", values["tool-call-parser"], enumFlag("auto", "hermes", "none")),
    reasoningParser: flagValue("reasoning-parser", values["reasoning-parser"], enumFlag(...REASONING_PARSERS, "none")),
    pooling: flagValue("pooling", values.pooling, enumFlag(...POOLINGS)),
    task: flagValue("task", values.task, enumFlag(...MODEL_TASKS)),
    logLevel: flagValue("log-level", values["log-level"], enumFlag("fatal", "error", "warn", "info", "debug", "trace", "silent")),
    apiKeys: (values["api-key"] ?? (process.env.TOKENMILL_API_KEY ? [process.env.TOKENMILL_API_KEY] : [])).map((key) => flagValue("api-key", key, nonEmptyFlag)),
    adminKeys: (values["admin-key"] ?? (process.env.TOKENMILL_ADMIN_KEY ? [process.env.TOKENMILL_ADMIN_KEY] : [])).map((key) => flagValue("admin-key", key, nonEmptyFlag)),
    db: values.db === "none" ? null : {
      url: flagValue("db", values.db, dbUrlFlag), sync: flagValue("db-sync", values["db-sync"], enumFlag("normal", "full")),
      ledger: !values["no-ledger"], replica: optionalFlagValue("replica-id", values["replica-id"], nonEmptyFlag),
      prices: (values.price ?? []).map(priceOf),
    },
    authMode: authModeOf(values["require-auth"], values["no-auth"]),
    limits: {
      defaults: { ...NO_LIMITS, ...readLimitFlags(values, "default-") },
      alerts: {
        thresholds: optionalFlagValue("alert-thresholds", values["alert-thresholds"], listFlag(intFlag(1, 1000))),
        webhookUrl: optionalFlagValue("alert-webhook", values["alert-webhook"], urlFlag),
        webhookSecret: optionalFlagValue("alert-webhook-secret", values["alert-webhook-secret"] ?? process.env.TOKENMILL_ALERT_WEBHOOK_SECRET, nonEmptyFlag),
      },
    },
  };
  const served = values.config === undefined ? singleModel(values, engineFlags, server) : configured(values, server);
  if (server.db && served.prices.length > 0) server.db.prices = [...served.prices, ...server.db.prices];
  const running = await startServer({
    models: served.models,
    providers: served.providers,
    routes: served.routes,
    host: server.host,
    port: server.port,
    shutdownTimeoutMs: server.shutdownTimeoutMs,
    requestTimeoutMs: server.requestTimeoutMs,
    keepAliveTimeoutMs: server.keepAliveTimeoutMs,
    responsesRetentionMs: server.responsesRetentionMs,
    batch: server.batch,
    bodyLimitBytes: server.bodyLimitBytes,
    tokenizerThreads: server.tokenizerThreads,
    apiKeys: server.apiKeys,
    adminKeys: server.adminKeys,
    db: server.db,
    limits: server.limits,
    authMode: server.authMode,
    logger: { level: server.logLevel },
  });
  for (const warning of secretFlagWarnings(values)) running.app.log.warn(warning);
  const names = running.ctx.models.names().map((route) => route.name);
  running.app.log.info(`serving ${names.map((n) => `"${n}"`).join(", ")} at ${running.url}/v1 (loading ${served.models.length === 1 ? "the model" : `${served.models.length} local models`}...)`);
  running.ready.catch(() => process.exit(1));
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.once(signal, () => {
      running.app.log.info({ signal }, "draining: no new requests; finishing in-flight ones");
      void running.close().then(() => process.exit(0));
    });
  }
}

const urlFlag = { schema: nonEmptyFlag.schema.refine((text) => /^https?:\/\/.+/.test(text)), accepts: "an http:// or https:// URL" };

/** --price MODEL=IN,CACHED,OUT, in USD per million tokens. */
function priceOf(text: string): Omit<Price, "effectiveMs"> {
  const at = text.lastIndexOf("=");
  const tiers = at > 0 ? text.slice(at + 1).split(",") : [];
  if (tiers.length !== 3) throw new FlagError(`--price takes MODEL=IN,CACHED,OUT in USD per million tokens, e.g. my-model=0.15,0.075,0.60; got "${text}"`);
  try {
    const [inputPerMtok, cachedInputPerMtok, outputPerMtok] = tiers.map(microUsdPerMtok);
    return { model: text.slice(0, at), inputPerMtok, cachedInputPerMtok, outputPerMtok };
  } catch (err) {
    throw new FlagError(`--price: ${(err as Error).message}`);
  }
}

/** Secrets given as flags: npm's start banner prints the command line, and `ps` shows it to every user of the host. */
export function secretFlagWarnings(values: { "admin-key"?: string[]; "api-key"?: string[]; "alert-webhook-secret"?: string }): string[] {
  const env: Record<string, string> = { "admin-key": "TOKENMILL_ADMIN_KEY", "api-key": "TOKENMILL_API_KEY", "alert-webhook-secret": "TOKENMILL_ALERT_WEBHOOK_SECRET" };
  return Object.keys(env).filter((flag) => values[flag as keyof typeof values] !== undefined)
    .map((flag) => `--${flag} puts a secret on the command line, where npm's start banner and \`ps\` show it; set ${env[flag]} instead`);
}

function authModeOf(requireAuth: boolean, noAuth: boolean): AuthMode {
  if (requireAuth && noAuth) throw new FlagError("--require-auth and --no-auth contradict each other; give one");
  return requireAuth ? "required" : noAuth ? "none" : "auto";
}

/** Without --config: the one model of --model, as today. */
function singleModel(
  values: EngineFlagValues, engineFlags: EngineFlags, server: { servedModelName?: string } & ModelDefaults,
): ServeConfig {
  const checkpoint = readCheckpoint(modelDirFrom(values));
  return {
    models: [{
      name: server.servedModelName ?? checkpoint.name, engineOptions: engineOptionsFrom(engineFlags, checkpoint), defaults: checkpoint.generationDefaults,
      maxQueuedRequests: server.maxQueuedRequests, toolCallParser: toolCallParserFor(server.toolCallParser, checkpoint.chatTemplate),
      reasoningParser: reasoningParserOf(server.reasoningParser), pooling: server.pooling, task: server.task,
    }],
    providers: [], routes: [], prices: [],
  };
}

/** --config: the file's models; the flags that name one model conflict with it. */
function configured(values: EngineFlagValues & { config?: string; "served-model-name"?: string }, server: ModelDefaults): ServeConfig {
  for (const flag of ["model", "served-model-name"] as const) {
    if (values[flag] !== undefined) throw new FlagError(`--${flag} names one model; with --config, give each model in the file`);
  }
  return readServeConfig(values.config!, values, process.env, server);
}
