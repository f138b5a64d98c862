/** `tokenmill keys`: create, list, update and revoke API keys in the service's database. */
import { parseArgs } from "node:util";
import { KEY_PRIORITIES, KeyRuleError, isLive, type ApiKey } from "../service/keys.ts";
import { Ledger, type LedgerTotals } from "../service/ledger.ts";
import { DEFAULT_PERIOD, usdText } from "../service/limits/key-limits.ts";
import { startService } from "../service/service.ts";
import { defaultDbUrl } from "../service/store/open-store.ts";
import { OWNER_FLAGS_HELP, OWNER_FLAG_OPTIONS, limitFlagOptions, limitFlagsHelp, readLimitFlags, readModelLimitFlags, readResidencyFlag } from "./limit-flags.ts";
import type { TeamStore } from "../service/teams.ts";
import { FlagError, dbUrlFlag, enumFlag, flagValue, listFlag, nonEmptyFlag, optionalFlagValue } from "./flags.ts";

export const KEYS_HELP = `tokenmill keys create --name NAME [--team T] [--models a,b] [--expires DATE] [--metadata JSON] [--priority TIER] [limits]
tokenmill keys list [--team T]
tokenmill keys update ID [--team T|none] [--name NAME] [--models a,b|all] [--expires DATE|never] [--metadata JSON] [--priority TIER] [limits]
  --team T                      the team the key belongs to (its id or name; see teams): the team's limits bind it too
  --priority interactive|standard|batch   the scheduling tier of the key's requests (default: its team's, else standard)
Limits (each optional; unset: its team's --member-budget-usd, then the server's --default-*; on update, none clears one):
${limitFlagsHelp("", "the key's")}
${OWNER_FLAGS_HELP}
tokenmill keys revoke ID
  --db URL                      sqlite:PATH or postgres://... (default: the server's, $TOKENMILL_DATA_DIR/tokenmill.db)
  --json                        print JSON instead of text
create prints the secret once; only its hash is stored.`;

export async function keysCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      db: { type: "string", default: defaultDbUrl() }, name: { type: "string" }, models: { type: "string" },
      expires: { type: "string" }, metadata: { type: "string" }, priority: { type: "string" }, json: { type: "boolean", default: false }, help: { type: "boolean", short: "h" },
      team: { type: "string" }, ...OWNER_FLAG_OPTIONS,
      ...limitFlagOptions(""),
    },
  });
  const [action, id] = positionals;
  if (values.help || !action) return void console.log(KEYS_HELP);
  if (!["create", "list", "update", "revoke"].includes(action)) throw new FlagError(`unknown keys action "${action}"; try create, list, update or revoke`);
  if ((action === "update" || action === "revoke") && !id) throw new FlagError(`keys ${action} takes a key id (see keys list)`);
  const change = {
    name: optionalFlagValue("name", values.name, nonEmptyFlag),
    models: values.models === undefined ? undefined : values.models === "all" ? null : flagValue("models", values.models, listFlag(nonEmptyFlag)),
    expiresMs: expiresOf(values.expires),
    metadata: values.metadata === undefined ? undefined : metadataOf(values.metadata),
    priority: optionalFlagValue("priority", values.priority, enumFlag(...KEY_PRIORITIES)),
    limits: readLimitFlags(values, "", { clearable: action === "update" }),
    modelLimits: readModelLimitFlags(values["model-budget"], values["model-quota"]),
    dataResidency: readResidencyFlag(values["data-residency"]),
  };
  const service = await startService({ dbUrl: flagValue("db", values.db, dbUrlFlag), ledger: false });
  const print = (text: string, json: unknown) => console.log(values.json ? JSON.stringify(json) : text);
  try {
    const teamId = values.team === undefined ? undefined : values.team === "none" ? null : await teamIdOf(service.teams, values.team);
    if (action === "create") {
      if (!change.name) throw new FlagError("keys create needs --name");
      const { key, secret } = await keyRules(() => service.keys.create({ ...change, name: change.name!, teamId }));
      print(`${secret}\n(created ${key.id}, "${key.name}": keep the secret now, it is not shown again)`, { ...key, secret });
    } else if (action === "list") {
      const keys = (await service.keys.list()).filter((key) => teamId === undefined || key.teamId === teamId);
      const now = new Date();
      const monthStartMs = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
      const ledger = new Ledger(service.store.db, "cli");
      const listed = await Promise.all(keys.map(async (key) => ({ ...key, usageThisMonth: await ledger.totals(key.id, monthStartMs) })));
      print(listed.map((key) => `${describe(key)}  this month: ${usageText(key.usageThisMonth)}`).join("\n") || "(no keys: the server serves anonymously)", listed);
    } else if (action === "update") {
      const key = await keyRules(() => service.keys.update(id, { ...change, teamId }));
      if (!key) throw new FlagError(`no key with id ${id}`);
      print(describe(key), key);
    } else {
      if (!(await service.keys.revoke(id))) throw new FlagError(`no live key with id ${id}`);
      print(`revoked ${id}`, { id, revoked: true });
    }
  } finally {
    await service.close();
  }
}

/** A team's id from its id or name. */
export async function teamIdOf(teams: TeamStore, idOrName: string): Promise<string> {
  const team = await teams.find(idOrName);
  if (!team) throw new FlagError(`no team with id or name ${idOrName} (see teams list)`);
  return team.id;
}

/** A key rule broken (a model outside its team's list) as the CLI's error. */
async function keyRules<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof KeyRuleError) throw new FlagError(err.message);
    throw err;
  }
}

function describe(key: ApiKey): string {
  const day = (ms: number | null) => (ms === null ? "never" : new Date(ms).toISOString().slice(0, 10));
  const state = key.revokedMs !== null ? "revoked" : isLive(key) ? "active" : "expired";
  return `${key.id}  ${key.prefix}  ${key.name}  ${state}  created ${day(key.createdMs)}  last used ${day(key.lastUsedMs)}${key.teamId ? `  team ${key.teamId}` : ""}` +
    `  models ${key.models?.join(",") ?? "all"}  priority ${key.ownPriority || !key.teamId ? key.priority : "(the team's)"}${key.dataResidency === "local" ? "  data local" : ""}${limitsText(key)}`;
}

/** A key's or a team's limits, as a line's tail. */
export function limitsText(owner: Pick<ApiKey, "limits" | "modelLimits">): string {
  const { limits } = owner;
  const parts = [
    limits.rpm !== null ? `rpm ${limits.rpm}` : "", limits.tpm !== null ? `tpm ${limits.tpm}` : "",
    limits.maxParallel !== null ? `max-parallel ${limits.maxParallel}` : "",
    limits.budgetMicroUsd !== null ? `budget ${usdText(limits.budgetMicroUsd)}/${limits.budgetPeriod ?? DEFAULT_PERIOD}` : "",
    limits.tokenQuota !== null ? `quota ${limits.tokenQuota} tokens/${limits.quotaPeriod ?? DEFAULT_PERIOD}` : "",
    ...Object.entries(owner.modelLimits).map(([model, m]) => [
      m.budgetMicroUsd !== null ? `${model} budget ${usdText(m.budgetMicroUsd)}/${m.budgetPeriod}` : "", m.tokenQuota !== null ? `${model} quota ${m.tokenQuota} tokens/${m.quotaPeriod}` : "",
    ].filter(Boolean).join(", ")),
  ].filter(Boolean);
  return parts.length > 0 ? `  limits ${parts.join(", ")}` : "";
}

export function usageText(totals: LedgerTotals): string {
  return `${totals.numRequests} requests, ${totals.uncachedInputTokens} input + ${totals.cachedInputTokens} cached + ${totals.outputTokens} output tokens, ` +
    `$${(totals.costMicroUsd / 1e6).toFixed(6)}`;
}

function expiresOf(text: string | undefined): number | null | undefined {
  if (text === undefined) return undefined;
  if (text === "never") return null;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new FlagError(`--expires takes a date such as 2027-01-31 or never; got "${text}"`);
  return ms;
}

export function metadataOf(text: string): Record<string, unknown> {
  try {
    const value = JSON.parse(text) as unknown;
    if (value && typeof value === "object" && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new FlagError(`--metadata takes a JSON object; got ${text}`);
}
