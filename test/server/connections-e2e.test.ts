/**
 * Connections as pooled clients use them (the openai SDK, undici, a proxy in front), against a
 * real server on the real model: a socket idle past Node's 5 s default is still the server's to
 * reuse; a drain finishes every request that reached it and answers the ones that arrive on
 * open sockets with a 503 and `Connection: close`, never a reset; an oversized body gets its
 * 413 read by the client, however many arrive at once. bench/connection-soak.ts runs the same
 * checks for more rounds.
 */
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";
import { drainRound, idleRound, oversizedRound, PooledClient } from "../../bench/connection-checks.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";

describe("keep-alive", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startTestServer({ maxNumSeqs: 64 });
  }, 120_000);
  afterAll(async () => server?.close());

  it("says Keep-Alive: timeout=75, well past a proxy's 60 s", async () => {
    const client = new PooledClient(server.url, 1);
    try {
      const reply = await client.request("GET", "/health");
      expect(reply.headers["keep-alive"]).toBe("timeout=75");
    } finally {
      client.close();
    }
  });

  it("a pool idle 6 s (past Node's default 5 s) then 50 concurrent requests, 2 rounds: the same sockets, no reset", async () => {
    const client = new PooledClient(server.url, 50);
    try {
      for (let round = 0; round < 2; round++) {
        const result = await idleRound(client, MODEL, { idleMs: 6000, concurrency: 50 });
        expect(result.resets, result.errors.join("\n")).toBe(0);
        expect(result.statuses.every((s) => s === 200)).toBe(true);
        // Every socket of the burst was one the pool already had: the server kept them open through the idle time.
        if (round > 0) expect(result.newSockets).toBe(0);
      }
    } finally {
      client.close();
    }
  }, 60_000);
});

describe("oversized bodies under load", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startTestServer({ maxNumSeqs: 64, bodyLimitBytes: 1024 * 1024 });
  }, 120_000);
  afterAll(async () => server?.close());

  it("20 bodies of 8 MiB beside 24 small chats: 20 × 413 read by their clients, 24 × 200", async () => {
    const result = await oversizedRound(server.url, MODEL, { numOversized: 20, oversizedBytes: 8 * 1024 * 1024, numSmall: 24 });
    expect(result.oversized, result.errors.join("\n")).toEqual(Array(20).fill(413));
    expect(result.small).toEqual(Array(24).fill(200));
  }, 60_000);

  it("a client that reads its 413 while still sending can finish the body, and the connection then serves its next request", async () => {
    const { hostname, port } = new URL(server.url);
    const socket = connect(Number(port), hostname);
    let received = "";
    socket.setEncoding("utf8").on("data", (chunk: string) => (received += chunk));
    const failed = new Promise<Error>((resolve) => socket.on("error", resolve));
    const total = 8 * 1024 * 1024;
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${total}\r\n\r\n`);
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    socket.write(chunk);
    await until(() => /\r\n\r\n\{.*\}$/s.test(received));
    expect(received).toMatch(/^HTTP\/1\.1 413/);
    expect(received.toLowerCase()).not.toContain("connection: close");
    for (let sent = chunk.length; sent < total; sent += chunk.length) {
      if (!socket.write(chunk.subarray(0, Math.min(chunk.length, total - sent)))) await new Promise((resolve) => socket.once("drain", resolve));
    }
    received = "";
    socket.write("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    await until(() => /\r\n\r\n\{.*\}$/s.test(received));
    expect(received).toMatch(/^HTTP\/1\.1 200/);
    socket.destroy();
    expect(await Promise.race([failed, Promise.resolve(null)])).toBe(null);
  }, 60_000);
});

describe("drain on pooled sockets", () => {
  it("3 drains with 20 requests in flight, and one with none: each in flight completes; each request sent as the drain begins or during it gets an answer (200 or 503) or a refused connection, never a reset", async () => {
    for (const inFlight of [20, 20, 20, 0]) {
      const server = await startTestServer({ maxNumSeqs: 64, shutdownTimeoutMs: 30_000 });
      const result = await drainRound(server.url, MODEL, { inFlight, maxTokens: 80, closeAfterMs: 400, justSent: 10, lateRequests: 10, close: () => server.close() });
      expect(result.inFlight.filter((s) => s !== 200), result.errors.join("\n")).toEqual([]);
      expect(result.justSent.filter((s) => s !== 200 && s !== 503), result.errors.join("\n")).toEqual([]);
      expect(result.late.filter((s) => s !== 503 && s !== "refused"), result.errors.join("\n")).toEqual([]);
      expect(result.late503HadConnectionClose).toBe(true);
    }
  }, 180_000);
});
