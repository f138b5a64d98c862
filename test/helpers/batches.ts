/** Helpers for the batch tests: JSONL input, waiting for a batch to end, and reading its output or error file. */
import type OpenAI from "openai";

const DONE = ["completed", "failed", "expired", "cancelled"];

type OutputLine = { custom_id: string; response: { status_code: number; request_id: string; body: Record<string, unknown> } | null; error: { code: string; message: string } | null };

export const jsonl = (lines: object[]) => `${lines.map((l) => JSON.stringify(l)).join("\n")}\n`;

export async function waitForBatch(client: OpenAI, id: string, timeoutMs = 120_000): Promise<OpenAI.Batch> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const batch = await client.batches.retrieve(id);
    if (DONE.includes(batch.status) || Date.now() > until) return batch;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function linesOf(client: OpenAI, fileId: string | null | undefined): Promise<OutputLine[]> {
  if (!fileId) return [];
  const text = await (await client.files.content(fileId)).text();
  return text.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as OutputLine);
}

