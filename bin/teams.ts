/** `tokenmill teams`: create, list, update and delete teams in the service's database. */
import { parseArgs } from "node:util";
import { Ledger } from "../service/ledger.ts";
import { KEY_PRIORITIES } from "../service/keys.ts";
import { DEFAULT_PERIOD, usdText } from "../service/limits/key-limits.ts";
import { PERIODS, type Period } from "../service/limits/periods.ts";
import { startService } from "../service/service.ts";
import { defaultDbUrl } from "../service/store/open-store.ts";
import { TeamRuleError, type MemberBudget, type Team } from "../service/teams.ts";
import { FlagError, dbUrlFlag, enumFlag, flagValue, listFlag, nonEmptyFlag, optionalFlagValue } from "./flags.ts";
import { limitsText, metadataOf, usageText } from "./keys.ts";
import { OWNER_FLAGS_HELP, OWNER_FLAG_OPTIONS, limitFlagOptions, limitFlagsHelp, readLimitFlags, readModelLimitFlags, readResidencyFlag, usdFlag } from "./limit-flags.ts";

export const TEAMS_HELP = `tokenmill teams create --name NAME [--models a,b] [--metadata JSON] [--priority TIER] [--member-budget-usd X] [limits]
tokenmill teams list
tokenmill teams update T [--name NAME] [--models a,b|all] [--metadata JSON] [--priority TIER] [--member-budget-usd X|none] [limits]
tokenmill teams delete T      (T: the team's id or name; a team with live keys is not deleted)
  A key joins a team with keys create|update --team T; a request must fit its key's limits and its team's.
  --models a,b                  the models the team's keys may use; each key's own list must stay inside it
  --priority interactive|standard|batch   the tier of its keys' requests, for keys that set none
  --member-budget-usd X [--member-budget-period day|week|month]   the budget of each of its keys that sets none
Limits (each optional; the team's keys share them; on update, none clears one):
${limitFlagsHelp("", "the team's")}
${OWNER_FLAGS_HELP}
  --db URL                      sqlite:PATH or postgres://... (default: the server's)
  --json                        print JSON instead of text`;

export async function teamsCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      db: { type: "string", default: defaultDbUrl() }, name: { type: "string" }, models: { type: "string" }, metadata: { type: "string" }, priority: { type: "string" },
      "member-budget-usd": { type: "string" }, "member-budget-period": { type: "string" },
      json: { type: "boolean", default: false }, help: { type: "boolean", short: "h" }, ...OWNER_FLAG_OPTIONS, ...limitFlagOptions(""),
    },
  });
  const [action, which] = positionals;
  if (values.help || !action) return void console.log(TEAMS_HELP);
  if (!["create", "list", "update", "delete"].includes(action)) throw new FlagError(`unknown teams action "${action}"; try create, list, update or delete`);
  if ((action === "update" || action === "delete") && !which) throw new FlagError(`teams ${action} takes a team's id or name (see teams list)`);
  const update = action === "update";
  const change = {
    name: optionalFlagValue("name", values.name, nonEmptyFlag),
    models: values.models === undefined ? undefined : values.models === "all" ? null : flagValue("models", values.models, listFlag(nonEmptyFlag)),
    metadata: values.metadata === undefined ? undefined : metadataOf(values.metadata),
    priority: optionalFlagValue("priority", values.priority, enumFlag(...KEY_PRIORITIES)),
    limits: readLimitFlags(values, "", { clearable: update }),
    modelLimits: readModelLimitFlags(values["model-budget"], values["model-quota"]),
    dataResidency: readResidencyFlag(values["data-residency"]),
    memberBudget: memberBudgetOf(values["member-budget-usd"], values["member-budget-period"]),
  };
  const service = await startService({ dbUrl: flagValue("db", values.db, dbUrlFlag), ledger: false });
  const print = (text: string, json: unknown) => console.log(values.json ? JSON.stringify(json) : text);
  try {
    const find = async () => {
      const team = await service.teams.find(which);
      if (!team) throw new FlagError(`no team with id or name ${which} (see teams list)`);
      return team;
    };
    await teamRules(async () => {
      if (action === "create") {
        if (!change.name) throw new FlagError("teams create needs --name");
        const team = await service.teams.create({ ...change, name: change.name });
        print(`created ${describe(team)}`, team);
      } else if (action === "list") {
        const now = new Date();
        const monthStartMs = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
        const ledger = new Ledger(service.store.db, "cli");
        const listed = await Promise.all((await service.teams.list()).map(async (team) => ({
          ...team, numKeys: (await service.keys.ofTeam(team.id)).length, usageThisMonth: await ledger.totals(undefined, monthStartMs, team.id),
        })));
        print(listed.map((team) => `${describe(team)}  keys ${team.numKeys}  this month: ${usageText(team.usageThisMonth)}`).join("\n") || "(no teams)", listed);
      } else if (action === "update") {
        const team = await service.teams.update((await find()).id, change);
        print(describe(team!), team);
      } else {
        const team = await find();
        await service.teams.delete(team.id);
        print(`deleted ${team.id} ("${team.name}")`, { id: team.id, deleted: true });
      }
    });
  } finally {
    await service.close();
  }
}

function memberBudgetOf(usd: string | undefined, period: string | undefined): MemberBudget | null | undefined {
  if (usd === undefined) {
    if (period !== undefined) throw new FlagError("--member-budget-period goes with --member-budget-usd");
    return undefined;
  }
  if (usd === "none") return null;
  return { budgetMicroUsd: flagValue("member-budget-usd", usd, usdFlag), budgetPeriod: (optionalFlagValue("member-budget-period", period, enumFlag(...(PERIODS as Period[]))) ?? null) };
}

async function teamRules(run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if (err instanceof TeamRuleError) throw new FlagError(err.message);
    throw err;
  }
}

function describe(team: Team): string {
  const member = team.memberBudget ? `  member budget ${usdText(team.memberBudget.budgetMicroUsd)}/${team.memberBudget.budgetPeriod ?? DEFAULT_PERIOD}` : "";
  return `${team.id}  ${team.name}  models ${team.models?.join(",") ?? "all"}  priority ${team.ownPriority ? team.priority : "standard"}` +
    `${team.dataResidency === "local" ? "  data local" : ""}${member}${limitsText(team)}`;
}
