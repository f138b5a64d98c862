/** `tokenmill keys` as an operator runs it: create prints the secret once, list shows state and usage, update, revoke. */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "./helpers/cli.ts";

const dir = mkdtempSync(join(tmpdir(), "tokenmill-keys-"));
const db = `sqlite:${join(dir, "keys.db")}`;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("tokenmill keys", () => {
  it("creates, lists, updates and revokes keys, and stores no secret", () => {
    const created = runCli(["keys", "create", "--name", "team-a", "--models", "m1,m2", "--metadata", '{"team":"a"}', "--db", db, "--json"]);
    expect(created.status, created.stderr).toBe(0);
    const key = JSON.parse(created.stdout) as { id: string; secret: string; models: string[] };
    expect(key.secret).toMatch(/^tm-/);
    expect(key.models).toEqual(["m1", "m2"]);
    for (const file of readdirSync(dir)) expect(readFileSync(join(dir, file)).includes(key.secret.slice(8))).toBe(false);

    const listed = runCli(["keys", "list", "--db", db]);
    expect(listed.stdout).toMatch(new RegExp(`${key.id}\\s+tm-.{5}…\\s+team-a\\s+active .*models m1,m2\\s+this month: 0 requests`));
    expect(listed.stdout).not.toContain(key.secret);
    expect(runCli(["keys", "update", key.id, "--name", "team-b", "--models", "all", "--db", db]).stdout).toMatch(/team-b\s+active .*models all/);
    expect(runCli(["keys", "revoke", key.id, "--db", db]).status).toBe(0);
    expect(runCli(["keys", "list", "--db", db]).stdout).toMatch(/team-b\s+revoked/);
    const again = runCli(["keys", "revoke", key.id, "--db", db]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/no live key/);
    const bad = runCli(["keys", "create", "--db", db]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/needs --name/);
  });
});
