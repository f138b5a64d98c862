/** `tokenmill serve` as its own process, as operators run it: on a free port, waited for until /health says 200. */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { freePort } from "./free-port.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface Serving {
  child: ChildProcess;
  url: string;
  exited: Promise<unknown>;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<void>;
}

export async function serveProcess(db: string, replica: string, dataDir: string, extraArgs: string[] = []): Promise<Serving> {
  const port = await freePort();
  const child = spawn(process.execPath, [
    "--import", "tsx", "bin/tokenmill.ts", "serve", "--db", db, "--replica-id", replica, "--kv-cache-memory", "256MiB", "--log-level", "warn", ...extraArgs,
  ], {
    cwd: ROOT, env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", TOKENMILL_DATA_DIR: dataDir }, stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr!.resume();
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    child.kill("SIGTERM");
    await exited;
  };
  for (let i = 0; i < 600; i++) {
    if ((await fetch(`${url}/health`).then((r) => r.status, () => 0)) === 200) return { child, url, exited, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill("SIGKILL");
  throw new Error("the server never became healthy");
}
