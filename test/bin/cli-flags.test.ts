/**
 * Every flag of serve, generate and bench is validated before anything loads: a bad value
 * exits 1 with a message naming the flag and what it accepts.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bytesFlag, enumFlag, flagValue, intFlag, listFlag, numberFlag } from "../../bin/flags.ts";
import { readEngineFlags } from "../../bin/engine-flags.ts";
import { spinningFor } from "../../engine/runner/onnx-host/onnx-session.ts";
import { secretFlagWarnings } from "../../bin/serve.ts";
import { runCli, runCliAsync } from "../helpers/cli.ts";
import { freePort } from "../helpers/free-port.ts";

describe("flag values", () => {
  it.each([
    ["an integer", intFlag(0), ["abc", "", " ", "1.5", "1e3", "-1", "0x10", "12abc"], [["0", 0], ["1024", 1024], [" 7 ", 7]]],
    ["a port", intFlag(0, 65535), ["65536", "-1", "port"], [["8000", 8000]]],
    ["a number", numberFlag(0), ["abc", "", "NaN", "-0.5", "Infinity"], [["0", 0], ["1.5", 1.5], ["30", 30]]],
    ["an open-below number", numberFlag(0, 1, { minExclusive: true }), ["0", "1.01", "x"], [["0.9", 0.9], ["1", 1]]],
    ["a size", bytesFlag, ["lots", "", "0", "12 parsecs", "-1GiB"], [["2GiB", 2 * 1024 ** 3], ["512MiB", 512 * 1024 ** 2], ["1000", 1000]]],
    ["a choice", enumFlag("cpu", "cuda"), ["gpu", "", "CPU"], [["cuda", "cuda"]]],
    ["a list", listFlag(intFlag(1)), ["", "1,,2", "1,x", "0"], [["1,4,16", [1, 4, 16]]]],
  ] as const)("%s refuses bad values with the flag's name and what it takes", (_name, flag, bad, good) => {
    for (const raw of bad) expect(() => flagValue("some-flag", raw, flag as never), raw).toThrow(/^--some-flag takes .+; got ".*"$/);
    for (const [raw, value] of good) expect(flagValue("some-flag", raw, flag as never)).toEqual(value);
  });

  it("checks each engine flag", () => {
    const good = { device: "cpu", "kv-cache-memory": "2GiB", "block-size": "16", "max-num-seqs": "128", "max-num-batched-tokens": "2048" };
    expect(readEngineFlags(good)).toMatchObject({ device: "cpu", blockSize: 16, maxNumSeqs: 128, maxModelLen: undefined, intraOpThreads: undefined });
    for (const [flag, raw] of [["device", "tpu"], ["kv-cache-memory", "much"], ["block-size", "0"], ["max-num-seqs", "-4"],
      ["max-num-batched-tokens", "lots"], ["max-model-len", "1.5"], ["threads", "all"], ["batch-max-wait", "soon"], ["kv-cache-dtype", "fp8"], ["ort-spinning", "yes"]]) {
      expect(() => readEngineFlags({ ...good, [flag]: raw }), flag).toThrow(new RegExp(`^--${flag} takes `));
    }
    expect(readEngineFlags(good).kvCacheDtype).toBeUndefined();
    expect(readEngineFlags({ ...good, "kv-cache-dtype": "auto" }).kvCacheDtype).toBeUndefined();
    expect(readEngineFlags({ ...good, "kv-cache-dtype": "int8" }).kvCacheDtype).toBe("int8");
    expect(() => readEngineFlags({ ...good, device: "webgpu", "kv-cache-dtype": "int8" })).toThrow(/--kv-cache-dtype int8 is for the host pool .* float16/);
    expect(readEngineFlags({ ...good, device: "webgpu", "kv-cache-dtype": "float16" }).kvCacheDtype).toBe("float16");
    // --ort-spinning: auto leaves it to the graph's size (spinningFor: measured faster from 256 MiB of weights).
    expect(readEngineFlags(good).spinning).toBeUndefined();
    expect(readEngineFlags({ ...good, "ort-spinning": "on" }).spinning).toBe(true);
    expect(readEngineFlags({ ...good, "ort-spinning": "off" }).spinning).toBe(false);
    expect([spinningFor(60 * 1024 ** 2), spinningFor(448 * 1024 ** 2)]).toEqual([false, true]);
  });

  it("turns LoRA on with any LoRA flag, reads --lora-modules in both of vLLM's forms, and refuses bad ones", () => {
    const good = { device: "cpu", "kv-cache-memory": "2GiB", "block-size": "16", "max-num-seqs": "128", "max-num-batched-tokens": "2048" };
    expect(readEngineFlags(good).maxLoras).toBeUndefined();
    expect(readEngineFlags({ ...good, "enable-lora": true })).toMatchObject({ maxLoras: 4, maxLoraRank: 16, loraModules: [] });
    expect(readEngineFlags({ ...good, "lora-modules": ["sql=/a/sql", '{"name": "chat", "path": "/a/chat"}'], "max-loras": "8", "max-lora-rank": "32" })).toMatchObject({
      maxLoras: 8, maxLoraRank: 32, loraModules: [{ name: "sql", path: "/a/sql" }, { name: "chat", path: "/a/chat" }],
    });
    expect(() => readEngineFlags({ ...good, "lora-modules": ["sql"] })).toThrow(/--lora-modules takes NAME=PATH/);
    expect(() => readEngineFlags({ ...good, "lora-modules": ['{"name": "x"}'] })).toThrow(/needs "name" and "path"/);
    expect(() => readEngineFlags({ ...good, "lora-modules": ["a=/x", "a=/y"] })).toThrow(/names a twice/);
    expect(() => readEngineFlags({ ...good, "max-loras": "0" })).toThrow(/^--max-loras takes /);
    expect(() => readEngineFlags({ ...good, "max-lora-rank": "big" })).toThrow(/^--max-lora-rank takes /);
  });
});

describe("the command line", () => {
  it.each([
    [["serve", "--max-queued-requests", "abc"], /--max-queued-requests takes an integer ≥ 0; got "abc"/],
    [["serve", "--shutdown-timeout", "abc"], /--shutdown-timeout takes a number ≥ 0; got "abc"/],
    [["serve", "--request-timeout", "0"], /--request-timeout takes a number > 0/],
    [["serve", "--pooling", "cls"], /--pooling takes one of last, mean; got "cls"/],
    [["serve", "--task", "chat"], /--task takes one of generate, embed, both; got "chat"/],
    [["generate", "--prompt", "hi", "--top-p", "0"], /--top-p takes a number > 0 and ≤ 1; got "0"/],
    [["bench", "--rounds", "none"], /--rounds takes an integer ≥ 1; got "none"/],
    [["serve", "--default-rpm", "0"], /--default-rpm takes an integer ≥ 1; got "0"/],
    [["serve", "--default-budget-usd", "ten"], /--default-budget-usd takes USD with up to 6 decimals/],
    [["serve", "--default-budget-period", "year"], /--default-budget-period takes one of day, week, month/],
    [["serve", "--alert-thresholds", "50,x"], /--alert-thresholds takes a comma-separated list/],
    [["serve", "--alert-webhook", "ftp://x"], /--alert-webhook takes an http:\/\/ or https:\/\/ URL/],
    [["keys", "create", "--name", "k", "--rpm", "none"], /--rpm takes an integer ≥ 1; got "none"/],
  ])("%j exits 1 with a message naming the flag", (args, message) => {
    const { status, stderr } = runCli(args);
    expect(status).toBe(1);
    expect(stderr).toMatch(message);
  });

  it("refuses an empty line in --prompts-file, naming the line", () => {
    const file = join(mkdtempSync(join(tmpdir(), "tokenmill-prompts-")), "prompts.txt");
    writeFileSync(file, "first\n\nthird\n");
    const { status, stderr } = runCli(["generate", "--prompts-file", file, "--max-tokens", "2"]);
    expect(status).toBe(1);
    expect(stderr).toMatch(/line 2 is empty/);
  });

  it("bench --base-url at a dead address says why its requests failed and exits non-zero", async () => {
    const port = await freePort();
    const { status, stderr } = await runCliAsync(["bench", "--base-url", `http://127.0.0.1:${port}`, "--num-prompts", "3", "--input-len", "8", "--output-len", "4"]);
    expect(status).toBe(1);
    expect(stderr).toMatch(/3 of 3 requests to http:\/\/127\.0\.0\.1:\d+ failed:\n {2}3 × .*(ECONNREFUSED|fetch failed)/);
    expect(stderr).toMatch(/every request to .* failed/);
  });
});

describe("secrets on the command line", () => {
  it("are warned about, naming the environment variable to use instead; secrets from the environment are not", () => {
    expect(secretFlagWarnings({ "admin-key": ["s3cret"], "alert-webhook-secret": "x" })).toEqual([
      expect.stringMatching(/^--admin-key puts a secret on the command line.*set TOKENMILL_ADMIN_KEY instead$/),
      expect.stringMatching(/^--alert-webhook-secret .*set TOKENMILL_ALERT_WEBHOOK_SECRET instead$/),
    ]);
    expect(secretFlagWarnings({ "api-key": ["k"] })[0]).toMatch(/TOKENMILL_API_KEY/);
    expect(secretFlagWarnings({})).toEqual([]);
    // The warning never carries the secret itself.
    expect(secretFlagWarnings({ "admin-key": ["s3cret"] }).join("")).not.toContain("s3cret");
  });
});
