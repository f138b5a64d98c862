#!/usr/bin/env -S node --import tsx
/** The tokenmill command line: serve, generate, bench, keys, teams, batches, usage, device-check, bundle. */
import { GENERATE_HELP, generateCommand } from "./generate.ts";
import { SERVE_HELP, serveCommand } from "./serve.ts";
import { BENCH_HELP, benchCommand } from "./bench.ts";
import { KEYS_HELP, keysCommand } from "./keys.ts";
import { USAGE_HELP, usageCommand } from "./usage.ts";
import { TEAMS_HELP, teamsCommand } from "./teams.ts";
import { BATCHES_HELP, batchesCommand } from "./batches.ts";
import { BUNDLE_HELP, bundleCommand } from "./bundle.ts";
import { DEVICE_CHECK_HELP, deviceCheckCommand } from "./device-check.ts";

const HELP = `tokenmill: a self-hosted, OpenAI-compatible model server

  tokenmill serve [--model DIR] [--port N]    serve the OpenAI-compatible API
  tokenmill generate [options]               run prompts offline through the engine
  tokenmill bench [options]                  benchmark a server
  tokenmill keys create|list|update|revoke   manage API keys
  tokenmill teams create|list|update|delete  manage teams: limits their keys share
  tokenmill batches list|show|cancel         batch jobs (OpenAI's Batches API) and their progress
  tokenmill usage [--by key|team]             usage and cost by key (or team) and model, from the ledger
  tokenmill device-check [--profile quick]   what this machine's GPU runs: text, and a JSON report
  tokenmill bundle [--with-vulkan-loader]    build the self-contained archive for an offline Linux x64 host

Run a command with --help for its options.

${SERVE_HELP}

${GENERATE_HELP}

${BENCH_HELP}

${KEYS_HELP}

${TEAMS_HELP}

${BATCHES_HELP}

${USAGE_HELP}

${DEVICE_CHECK_HELP}

${BUNDLE_HELP}`;

const commands: Record<string, (args: string[]) => Promise<void>> = {
  serve: serveCommand,
  generate: generateCommand,
  bench: benchCommand,
  keys: keysCommand,
  teams: teamsCommand,
  batches: batchesCommand,
  usage: usageCommand,
  "device-check": deviceCheckCommand,
  bundle: bundleCommand,
};

async function main(argv: string[]): Promise<void> {
  const [name, ...args] = argv;
  if (!name || name === "--help" || name === "-h") return void console.log(HELP);
  const command = commands[name];
  if (!command) throw new Error(`unknown command "${name}"; try: ${Object.keys(commands).join(", ")}`);
  await command(args);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  console.error(`tokenmill: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
