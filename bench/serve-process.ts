/**
 * `tokenmill serve` as its own process, as operators run it (in the bundle or the source tree):
 * on a free loopback port, waited for until /health says 200. For benches and tests that need
 * real server processes (replicas, routers, drains, kills).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { freePort } from "./free-port.ts";
import { tokenmillCommand } from "./self-command.ts";

export interface Serving {
  child: ChildProcess;
  url: string;
  exited: Promise<unknown>;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<void>;
}

export interface ServeProcessOptions {
  /** Its name in the error when it never becomes healthy. */
  name?: string;
  env?: NodeJS.ProcessEnv;
  /** How long to wait for /health to say 200 (default 120 s). */
  timeoutMs?: number;
}

/** Starts `tokenmill serve --port P --log-level warn ...args`; stderr's last 2,000 characters go into the error if it never serves. */
export async function serveProcess(args: string[], options: ServeProcessOptions = {}): Promise<Serving> {
  const port = await freePort();
  const { command, args: argv, cwd } = tokenmillCommand(["serve", "--port", String(port), "--host", "127.0.0.1", "--log-level", "warn", ...args]);
  const child = spawn(command, argv, { cwd, env: { ...process.env, ...options.env }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-2000)));
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    child.kill("SIGTERM");
    await exited;
  };
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  while (Date.now() < deadline && child.exitCode === null) {
    if ((await fetch(`${url}/health`).then((r) => r.status, () => 0)) === 200) return { child, url, exited, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill("SIGKILL");
  throw new Error(`${options.name ?? "the server"} never became healthy: ${stderr}`);
}
