/**
 * The admin and organization routes against a real server: every path variant a client can send
 * (percent-encoded, cased, doubled, dotted, with a trailing slash or query) reaches an admin route
 * only with the admin key. Access is decided on the route the router matched, so an encoded path
 * that the router decodes onto an admin route is still an admin route.
 */
import { request } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "tokenmill-tiny-qwen3";
const ADMIN = "admin-secret-for-access-tests";

/** Every admin and organization route, with a body where it takes one. */
const ROUTES: { method: string; path: string; body?: unknown }[] = [
  { method: "GET", path: "/v1/admin/keys" },
  { method: "POST", path: "/v1/admin/keys", body: { name: "intruder" } },
  { method: "GET", path: "/v1/admin/keys/KEYID" },
  { method: "PATCH", path: "/v1/admin/keys/KEYID", body: { name: "renamed" } },
  { method: "DELETE", path: "/v1/admin/keys/KEYID" },
  { method: "GET", path: "/v1/admin/teams" },
  { method: "POST", path: "/v1/admin/teams", body: { name: "intruders" } },
  { method: "GET", path: "/v1/admin/teams/TEAMID" },
  { method: "PATCH", path: "/v1/admin/teams/TEAMID", body: { budget_usd: 1000 } },
  { method: "DELETE", path: "/v1/admin/teams/TEAMID" },
  { method: "GET", path: "/v1/admin/engines" },
  { method: "GET", path: "/v1/admin/budgets" },
  { method: "GET", path: "/v1/admin/alerts" },
  { method: "GET", path: "/v1/admin/prices" },
  { method: "GET", path: "/v1/admin/adapters" },
  { method: "POST", path: "/v1/admin/adapters", body: { name: "intruder", path: "/tmp" } },
  { method: "DELETE", path: "/v1/admin/adapters/some-adapter" },
  { method: "POST", path: "/v1/load_lora_adapter", body: { lora_name: "intruder", lora_path: "/tmp" } },
  { method: "POST", path: "/v1/unload_lora_adapter", body: { lora_name: "intruder" } },
  { method: "POST", path: "/v1/admin/prices", body: { model: MODEL, input: 0, cached_input: 0, output: 0 } },
  { method: "GET", path: "/v1/organization/usage/completions?start_time=0" },
  { method: "GET", path: "/v1/organization/costs?start_time=0" },
];

/** Ways to write one path that a router or proxy may treat as the same route. */
export function pathVariants(path: string): string[] {
  const [bare, query] = path.split("?");
  const q = query ? `?${query}` : "";
  const segments = bare.split("/").filter(Boolean);
  const encodeFirst = (s: string, upper: boolean) => {
    const hex = s.charCodeAt(0).toString(16);
    return `%${upper ? hex.toUpperCase() : hex}${s.slice(1)}`;
  };
  const withSegment = (i: number, value: string) => "/" + segments.map((s, j) => (j === i ? value : s)).join("/");
  const variants = new Set<string>();
  segments.forEach((s, i) => {
    variants.add(withSegment(i, encodeFirst(s, false)) + q);
    variants.add(withSegment(i, encodeFirst(s, true)) + q);
    variants.add(withSegment(i, [...s].map((c) => `%${c.charCodeAt(0).toString(16)}`).join("")) + q);
    variants.add(withSegment(i, s.toUpperCase()) + q);
    variants.add(withSegment(i, s[0].toUpperCase() + s.slice(1)) + q);
  });
  variants.add(bare + "/" + q);
  variants.add("/" + bare + q);
  variants.add(bare.replace("/v1/", "/v1//") + q);
  variants.add(bare.replace("/v1/", "/v1/./") + q);
  variants.add(bare.replace("/v1/", "/v1/x/../") + q);
  variants.add(bare.replace("/v1/", "/v1%2F") + q);
  variants.add(bare.replace("/v1/", "/v1%2f") + q);
  variants.add(bare.replace(/\/([^/]+)$/, "%2F$1") + q);
  variants.add(bare + ";x" + q);
  variants.add(bare + (q ? `${q}&x=1` : "?x=1"));
  variants.add(bare.replace("/v1/", "/v1/%2e/") + q);
  variants.add(bare.replace("/v1/", "/v1/%2e%2e/v1/") + q);
  variants.add(path);
  return [...variants];
}

/** One request with the path sent byte for byte (fetch would normalize dots and cases). */
function raw(url: string, method: string, path: string, secret: string | null, body?: unknown): Promise<{ status: number; text: string }> {
  const { hostname, port } = new URL(url);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({
      host: hostname, port, method, path,
      headers: { ...(secret ? { authorization: `Bearer ${secret}` } : {}), ...(payload ? { "content-type": "application/json" } : {}), connection: "close" },
    }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c)).on("end", () => resolve({ status: res.statusCode!, text }));
    });
    req.on("error", reject);
    req.end(payload);
  });
}

describe("admin routes with an admin key configured", () => {
  let server: RunningServer;
  let dir: string;
  let userKey: { id: string; secret: string };
  let team: { id: string };
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tokenmill-access-"));
    server = await startTestServer({ db: { url: `sqlite:${join(dir, "t.db")}`, replica: "test" }, adminKeys: [ADMIN] });
    team = JSON.parse((await raw(server.url, "POST", "/v1/admin/teams", ADMIN, { name: "the team", budget_usd: 1 })).text) as { id: string };
    const created = await raw(server.url, "POST", "/v1/admin/keys", ADMIN, { name: "user", team_id: team.id });
    userKey = JSON.parse(created.text) as { id: string; secret: string };
  }, 120_000);
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the router decodes an encoded path onto the admin route: the admin reaches it, so the variants below really test it", async () => {
    const res = await raw(server.url, "GET", "/v1/%61dmin/keys", ADMIN);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).data.map((k: { id: string }) => k.id)).toContain(userKey.id);
    expect((await raw(server.url, "GET", "/v1/%6Frganization/costs?start_time=0", ADMIN)).status).toBe(200);
  });

  it("no variant of any admin or organization route answers a user key, a wrong key or no key with anything but 401, 403 or 404", async () => {
    const refused: string[] = [];
    for (const route of ROUTES) {
      for (const path of pathVariants(route.path.replace("KEYID", userKey.id).replace("TEAMID", team.id))) {
        for (const secret of [userKey.secret, "sk-wrong", null]) {
          const res = await raw(server.url, route.method, path, secret, route.body);
          if (![401, 403, 404].includes(res.status)) refused.push(`${route.method} ${path} as ${secret ?? "nobody"}: ${res.status} ${res.text.slice(0, 120)}`);
        }
      }
    }
    expect(refused).toEqual([]);
    // Nothing changed: the price is unset and the user key is neither renamed nor revoked.
    expect(JSON.parse((await raw(server.url, "GET", "/v1/admin/prices", ADMIN)).text).data).toEqual([]);
    const key = JSON.parse((await raw(server.url, "GET", `/v1/admin/keys/${userKey.id}`, ADMIN)).text) as { name: string; revoked_at?: unknown };
    expect(key.name).toBe("user");
    // Nor is the team's budget raised, nor the team deleted, nor another team made.
    const teams = JSON.parse((await raw(server.url, "GET", "/v1/admin/teams", ADMIN)).text) as { data: { id: string; budget_usd: number }[] };
    expect(teams.data.map((t) => [t.id, t.budget_usd])).toEqual([[team.id, 1]]);
    const models = await raw(server.url, "GET", "/v1/models", userKey.secret);
    expect(models.status).toBe(200);
  });
});

describe("the price admin API's bad values", () => {
  let server: RunningServer;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tokenmill-prices-"));
    server = await startTestServer({ db: { url: `sqlite:${join(dir, "t.db")}`, replica: "test" }, adminKeys: [ADMIN] });
  }, 120_000);
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const post = (body: Record<string, unknown>) => raw(server.url, "POST", "/v1/admin/prices", ADMIN, { model: MODEL, input: 0.15, cached_input: "0.075", output: 0.6, ...body });

  it.each([
    ["a price below a micro-dollar per million (never stored as 0)", { input: 1e-7 }, /input/],
    ["a negative price", { output: -1 }, /output/],
    ["a model name of 100,000 characters", { model: "m".repeat(100_000) }, /model/],
    ["effective_at in 1970", { effective_at: 1 }, /effective_at is in the past/],
    ["an unknown field", { currency: "eur" }, /currency|unrecognized/i],
  ])("refuses %s with a 400 naming it", async (_name, body, message) => {
    const reply = await post(body);
    expect(reply.status).toBe(400);
    expect(reply.text).toMatch(message);
  });

  it("takes a price now and one from a future time, exactly", async () => {
    expect((await post({})).status).toBe(201);
    const later = Math.floor(Date.now() / 1000) + 3600;
    const future = await post({ input: "0.2", effective_at: later });
    expect(future.status).toBe(201);
    expect(JSON.parse(future.text)).toMatchObject({ model: MODEL, input: 0.2, cached_input: 0.075, output: 0.6, effective_at: later });
  });
});

describe("admin routes on a server with no admin key (plain npm start)", () => {
  let server: RunningServer;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tokenmill-access-"));
    server = await startTestServer({ db: { url: `sqlite:${join(dir, "t.db")}`, replica: "test" } });
  }, 120_000);
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every variant of every admin route answers 404 (the admin API is off), and no key gets created", async () => {
    const opened: string[] = [];
    for (const route of ROUTES) {
      for (const path of pathVariants(route.path.replace("KEYID", "key_x"))) {
        for (const secret of ["anything", null]) {
          const res = await raw(server.url, route.method, path, secret, route.body);
          if (res.status !== 404) opened.push(`${route.method} ${path}: ${res.status} ${res.text.slice(0, 120)}`);
        }
      }
    }
    expect(opened).toEqual([]);
    // Still anonymous: had any variant created a key, every request would now need one.
    const chat = await raw(server.url, "POST", "/v1/chat/completions", null, { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
    expect(chat.status).toBe(200);
  });
});
