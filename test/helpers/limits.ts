/** Helpers for the per-key limit tests: keys made through the admin API, and bursts of concurrent requests. */
export const MODEL = "tokenmill-tiny-qwen3";
export const ADMIN = "admin-secret-for-limit-tests";

/** Creates a key with the admin API; returns its id and secret. */
export async function createKey(url: string, body: Record<string, unknown>): Promise<{ id: string; secret: string }> {
  const response = await fetch(`${url}/v1/admin/keys`, {
    method: "POST", headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (response.status !== 201) throw new Error(`creating a key failed: ${response.status} ${await response.text()}`);
  return (await response.json()) as { id: string; secret: string };
}

export interface Answer {
  status: number;
  code: string | null;
  headers: Headers;
  body: Record<string, unknown>;
}

/** One chat completion with raw fetch (so the test sees every header and status). */
export async function chat(url: string, secret: string, body: Record<string, unknown> = {}): Promise<Answer> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "count" }], max_tokens: 4, ...body }),
  });
  const json = (await response.json()) as Record<string, unknown>;
  return { status: response.status, code: (json.error as { code?: string } | undefined)?.code ?? null, headers: response.headers, body: json };
}

/** `count` requests at once, spread over the servers in turn. */
export function burst(urls: string[], secret: string, count: number, body: Record<string, unknown> = {}): Promise<Answer[]> {
  return Promise.all(Array.from({ length: count }, (_, i) => chat(urls[i % urls.length], secret, body)));
}

export const statuses = (answers: Answer[]) => answers.map((a) => `${a.status}${a.code ? ` ${a.code}` : ""}`).sort();
