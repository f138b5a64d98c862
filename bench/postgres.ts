/**
 * A throwaway PostgreSQL server, for tests and for benches that need a shared ledger: initdb
 * into a temporary folder, pg_ctl start on a free loopback port (about 1 s), stopped and
 * deleted afterwards. Debian's postgresql package
 * puts the binaries in /usr/lib/postgresql/N/bin; .ci/run installs it when it is missing.
 * NOTE: initdb refuses to run as root, so as root the server runs as the `postgres` user.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { freePort } from "./free-port.ts";


export interface TestPostgres {
  url: string;
  stop(): void;
  /** `pg_ctl stop -m fast`, as an operator's restart begins: every connection is terminated. */
  pause(): void;
  /** Starts it again on the same port and data. */
  resume(): void;
}

function binDir(): string {
  const onPath = spawnSync("sh", ["-c", "command -v pg_ctl"], { encoding: "utf8" }).stdout.trim();
  if (onPath) return join(onPath, "..");
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  const found = versions.map((v) => join(root, v, "bin")).find((dir) => existsSync(join(dir, "pg_ctl")));
  if (!found) throw new Error("PostgreSQL is not installed: apt-get install -y postgresql (as .ci/run does)");
  return found;
}

export async function startPostgres(): Promise<TestPostgres> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), "tokenmill-pg-"));
  const asRoot = userInfo().uid === 0;
  const run = (command: string, args: string[]) => {
    const argv = asRoot ? ["runuser", ["-u", "postgres", "--", join(bin, command), ...args]] as const : [join(bin, command), args] as const;
    execFileSync(argv[0], [...argv[1]], { stdio: "pipe" });
  };
  if (asRoot) chownSync(dir, Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" })), Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" })));
  const data = join(dir, "data");
  run("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
  const port = await freePort();
  const start = () => run("pg_ctl", ["-D", data, "-w", "-l", join(dir, "log"), "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, "start"]);
  start();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    pause: () => run("pg_ctl", ["-D", data, "-m", "fast", "-w", "stop"]),
    resume: start,
    stop() {
      try {
        run("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
