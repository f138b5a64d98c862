/** Helpers for the team tests: teams made through the admin API, requests spread over keys, and what the ledger holds. */
import { openStore } from "../../service/store/open-store.ts";
import { ADMIN, chat, type Answer } from "./limits.ts";

export async function admin(url: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${url}${path}`, {
    method, headers: { authorization: `Bearer ${ADMIN}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

export async function createTeam(url: string, body: Record<string, unknown>): Promise<{ id: string; name: string }> {
  const { status, body: team } = await admin(url, "POST", "/v1/admin/teams", body);
  if (status !== 201) throw new Error(`creating a team failed: ${status} ${JSON.stringify(team)}`);
  return team as { id: string; name: string };
}

/** `count` requests at once, spread over the keys (and servers) in turn. */
export function spread(urls: string[], secrets: string[], count: number, body: Record<string, unknown>): Promise<Answer[]> {
  return Promise.all(Array.from({ length: count }, (_, i) => chat(urls[i % urls.length], secrets[i % secrets.length], body)));
}

export const messageOf = (answer: Answer) => String((answer.body.error as { message?: string } | undefined)?.message ?? "");

/** What the ledger holds of a team's requests (or a key's): rows served and their cost. */
export async function ledgerOf(dbUrl: string, where: { teamId?: string; keyId?: string; model?: string }): Promise<{ served: number; costMicroUsd: number; rows: number }> {
  const store = await openStore(dbUrl);
  try {
    let query = store.db.selectFrom("usage_ledger").selectAll();
    if (where.teamId) query = query.where("team_id", "=", where.teamId);
    if (where.keyId) query = query.where("key_id", "=", where.keyId);
    if (where.model) query = query.where("model", "=", where.model);
    const rows = await query.execute();
    return { served: rows.filter((r) => r.status === "completed").length, costMicroUsd: rows.reduce((sum, r) => sum + Number(r.cost_micro_usd), 0), rows: rows.length };
  } finally {
    await store.close();
  }
}

