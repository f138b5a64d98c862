/** `tokenmill device-check`: what this machine's GPU runs, as text and as a JSON report (bench/device-check.ts). */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { runDeviceCheck } from "../bench/device-check.ts";
import { reportText } from "../bench/device-report.ts";
import { enumFlag, flagValue, intFlag } from "./flags.ts";

export const DEVICE_CHECK_HELP = `tokenmill device-check [options]
  --report FILE                 the JSON report (default device-check.json); its text goes to stdout
  --profile full|quick          full (default): the Qwen3-0.6B shape in float16 at concurrency 1, 32 and 128, TTFT of a
                                1,024-token prompt; quick: the default model at concurrency 1 and 4, a 256-token prompt
  --time-limit SECONDS          the whole check's limit (default 480); parts not reached stay empty`;

export async function deviceCheckCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      report: { type: "string", default: "device-check.json" },
      profile: { type: "string", default: "full" },
      "time-limit": { type: "string", default: "480" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) return void console.log(DEVICE_CHECK_HELP);
  const profile = flagValue("profile", values.profile, enumFlag("full", "quick"));
  const seconds = flagValue("time-limit", values["time-limit"], intFlag(60, 3600));
  const report = await runDeviceCheck({ profile, deadlineMs: seconds * 1000, log: (line) => console.error(`device-check: ${line}`) });
  const path = resolve(values.report);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
  console.log(reportText(report));
  console.log(`\nreport: ${path}`);
}
