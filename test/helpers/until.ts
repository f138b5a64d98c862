/**
 * Waits for something a test can't subscribe to (a counter, a metric, a breaker's state, a row
 * in the ledger) by checking it until it holds, and fails naming what it waited for when it
 * never does. Use it instead of a fixed sleep wherever the wait stands for an event: a loaded
 * machine makes any fixed sleep too short some day.
 */
import { setTimeout as sleep } from "node:timers/promises";

export interface UntilOptions {
  /** How long to wait in all (default 20 s: far beyond any event's normal time, even under load). */
  timeoutMs?: number;
  /** How often to check (default 10 ms; 0 checks again on the next turn of the event loop). */
  everyMs?: number;
  /** What is awaited, for the failure's message. */
  what?: string;
}

export async function until(condition: () => boolean | Promise<boolean>, options: UntilOptions = {}): Promise<void> {
  const { timeoutMs = 20_000, everyMs = 10, what = "the condition" } = options;
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}, and it never held`);
    await (everyMs === 0 ? new Promise((resolve) => setImmediate(resolve)) : sleep(everyMs));
  }
}
