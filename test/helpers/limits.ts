import { createServer } from "node:http";
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

/** A local HTTP receiver for alert webhooks: `answer` gives each delivery's status (body and signature header in hand). */
export async function startWebhookReceiver(answer: (body: string, signature: string | undefined) => number): Promise<{ url: string; close(): void }> {
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => res.writeHead(answer(body, req.headers["x-tokenmill-signature"] as string | undefined)).end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`, close: () => server.close() };
}
