/** `tokenmill serve --config`: the file is read whole and checked before anything loads. */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readServeConfig } from "../../bin/serve-config.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";

const dir = mkdtempSync(join(tmpdir(), "tokenmill-config-"));
let n = 0;
const write = (text: string, ext = "yaml") => {
  const path = join(dir, `c${n++}.${ext}`);
  writeFileSync(path, text);
  return path;
};
const CLI = { "kv-cache-memory": "1GiB", device: "cpu", "block-size": "16", "max-num-seqs": "128", "max-num-batched-tokens": "2048" };

const FULL = `
kv-cache-memory: 1GiB
models:
  - name: tiny
    aliases: [default]
    kv-cache-share: 0.25
    max-num-seqs: 8
    price: { input: 0.1, cached-input: 0.05, output: 0.4 }
  - name: tiny-int8
    quantization: int8
    threads: 1
    pooling: mean
    task: embed
providers:
  - name: cloud
    base-url: http://127.0.0.1:9/v1
    api-key-env: CLOUD_KEY
    timeout: 5
    max-concurrency: 3
    models:
      - name: cloud-model
        upstream: gpt-x
        price: { input: "0.15", cached-input: "0.075", output: "0.60" }
routes:
  - name: chat
    targets: [tiny, cloud-model]
    fallback-on: [engine_down, upstream_5xx]
    burst: { to: cloud-model, waiting-over: 4, ttft-over: 2.5 }
`;

describe("serve config", () => {
  ensureDefaultModel();

  it("reads models, providers, routes and prices, with the CLI's engine flags as defaults", () => {
    const config = readServeConfig(write(FULL), CLI, { CLOUD_KEY: "sk-cloud" });
    expect(config.models.map((m) => m.name)).toEqual(["tiny", "tiny-int8"]);
    const [tiny, int8] = config.models;
    expect(tiny.aliases).toEqual(["default"]);
    expect(tiny.engineOptions).toMatchObject({ maxNumSeqs: 8, kvCacheMemoryBytes: 256 * 1024 ** 2, quantization: "none", blockSize: 16 });
    // The rest of the memory goes to the models that set none: here, one.
    expect(int8.engineOptions).toMatchObject({ maxNumSeqs: 128, kvCacheMemoryBytes: 768 * 1024 ** 2, quantization: "int8", intraOpThreads: 1 });
    expect(tiny.toolCallParser).toBe("hermes");
    expect([tiny.pooling, tiny.task, int8.pooling, int8.task]).toEqual(["last", "both", "mean", "embed"]);
    expect(config.providers).toEqual([expect.objectContaining({
      name: "cloud", baseUrl: "http://127.0.0.1:9/v1", apiKey: "sk-cloud", timeoutMs: 5000, maxConcurrency: 3,
      models: [{ name: "cloud-model", upstreamModel: "gpt-x", maxOutputTokens: undefined, aliases: [] }],
    })]);
    expect(config.routes).toEqual([{ name: "chat", targets: ["tiny", "cloud-model"], fallbackOn: ["engine_down", "upstream_5xx"], burst: { to: "cloud-model", waitingOver: 4, ttftOverMs: 2500 } }]);
    expect(config.prices).toEqual([
      { model: "tiny", inputPerMtok: 100_000, cachedInputPerMtok: 50_000, outputPerMtok: 400_000 },
      { model: "cloud-model", inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 },
    ]);
  });

  it("reads a replica pool: its URLs, balance, health interval, load bounds and the prefix key's tokenizer and blocks", () => {
    const config = readServeConfig(write([
      "providers:", "  - name: replicas", "    replicas: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]", "    balance: prefix",
      "    health-interval: 2", "    load-factor: 1.5", "    load-slack: 2", "    prefix-blocks: 8", "    models: [{ name: tiny }]", "",
    ].join("\n")), CLI, {});
    expect(config.providers[0]).toMatchObject({
      name: "replicas", baseUrl: undefined, replicas: ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"], balance: "prefix", healthIntervalMs: 2000,
      loadFactor: 1.5, loadSlack: 2, prefix: { tokenizerDir: ensureDefaultModel(), numBlocks: 8, blockSize: 16 },
    });
    const plain = readServeConfig(write("providers:\n  - name: p\n    replicas: [http://y/v1, http://z/v1]\n    models: [{ name: u }]\n"), CLI, {});
    expect(plain.providers[0]).toMatchObject({ balance: "round-robin", prefix: undefined, healthIntervalMs: 5000 });
  });

  it("reads a model's LoRA adapters, in either form, with their prices", () => {
    const config = readServeConfig(write(`
models:
  - name: base
    max-loras: 2
    lora-modules:
      - sql=/adapters/sql
      - { name: chat, path: /adapters/chat, price: { input: 0.2, cached-input: 0.1, output: 0.8 } }
routes:
  - name: sql-route
    targets: [sql]
`), CLI, {});
    expect(config.models[0].engineOptions).toMatchObject({ maxLoras: 2, maxLoraRank: 16, loraModules: [{ name: "sql", path: "/adapters/sql" }, { name: "chat", path: "/adapters/chat" }] });
    expect(config.prices).toEqual([{ model: "chat", inputPerMtok: 200_000, cachedInputPerMtok: 100_000, outputPerMtok: 800_000 }]);
    expect(() => readServeConfig(write("models:\n  - name: a\n    lora-modules: [a=/x]\n"), CLI, {})).toThrow(/the name a \(a LoRA adapter of a\) is served twice/);
    expect(() => readServeConfig(write("models:\n  - name: a\n    lora-modules: [nopath]\n"), CLI, {})).toThrow(/models\[0\]\.lora-modules\[0\]: takes NAME=PATH/);
  });

  it("reads JSON as well", () => {
    const config = readServeConfig(write(JSON.stringify({ models: [{ name: "a" }] }), "json"), CLI, {});
    expect(config.models[0]).toMatchObject({ name: "a", engineOptions: { kvCacheMemoryBytes: 1024 ** 3 } });
  });

  it.each([
    ["an unknown key", "models:\n  - name: a\n    max-num-seq: 4\n", /models\[0\]\.max-num-seq: unknown key/],
    ["a bad engine flag", "models:\n  - name: a\n    device: tpu\n", /models\[0\] \(a\): device takes one of cpu, cuda, webgpu/],
    ["a bad pooling", "models:\n  - name: a\n    pooling: cls\n", /models\[0\]\.pooling: /],
    ["a name served twice", "models:\n  - name: a\n  - name: b\n    aliases: [a]\n", /the name a \(an alias of b\) is served twice/],
    ["a route to nothing", "models:\n  - name: a\nroutes:\n  - name: r\n    targets: [a, ghost]\n", /route r: its target ghost is not a model/],
    ["a burst with no local first", "models:\n  - name: a\nproviders:\n  - name: p\n    base-url: http://x/v1\n    models: [{ name: u }]\nroutes:\n  - name: r\n    targets: [u]\n    burst: { to: a, waiting-over: 1 }\n", /a burst rule needs a local model as the first target/],
    ["a burst with no trigger", "models:\n  - name: a\nroutes:\n  - name: r\n    targets: [a]\n    burst: { to: a }\n", /a burst rule needs waiting-over or ttft-over/],
    ["shares over 1", "models:\n  - name: a\n    kv-cache-share: 0.7\n  - name: b\n    kv-cache-share: 0.5\n", /add up to 1.2, more than 1/],
    ["an unset key variable", "providers:\n  - name: p\n    base-url: http://x/v1\n    api-key-env: NOT_SET_HERE\n    models: [{ name: u }]\n", /api-key-env NOT_SET_HERE is not set/],
    ["base-url and replicas both", "providers:\n  - name: p\n    base-url: http://x/v1\n    replicas: [http://y/v1]\n    models: [{ name: u }]\n", /providers\[0\]\.base-url: give base-url or replicas/],
    ["neither base-url nor replicas", "providers:\n  - name: p\n    models: [{ name: u }]\n", /providers\[0\]\.base-url: give base-url or replicas/],
    ["a replica listed twice", "providers:\n  - name: p\n    replicas: [http://y/v1, http://y/v1]\n    models: [{ name: u }]\n", /providers\[0\]\.replicas: a replica is listed twice/],
    ["a balance without replicas", "providers:\n  - name: p\n    base-url: http://x/v1\n    balance: prefix\n    models: [{ name: u }]\n", /providers\[0\]\.balance: balance spreads requests over replicas/],
    ["an unknown balance", "providers:\n  - name: p\n    replicas: [http://y/v1, http://z/v1]\n    balance: random\n    models: [{ name: u }]\n", /providers\[0\]\.balance: /],
    ["a replica that is no URL", "providers:\n  - name: p\n    replicas: [y:8000]\n    models: [{ name: u }]\n", /providers\[0\]\.replicas\[0\]: an http:\/\/ or https:\/\/ URL/],
    ["an unknown fallback reason", "models:\n  - name: a\nroutes:\n  - name: r\n    targets: [a]\n    fallback-on: [always]\n", /routes\[0\]\.fallback-on\[0\]/],
    ["nothing to serve", "models: []\n", /it serves nothing/],
    ["not YAML", "models: [\n", /--config .*c\d+\.yaml: /],
  ])("refuses %s, naming where", (_what, text, message) => {
    expect(() => readServeConfig(write(text), CLI, {})).toThrow(message);
  });
});

describe("the example config in docs/routing.md", () => {
  it("is a config tokenmill reads", async () => {
    const { readFileSync } = await import("node:fs");
    const readme = readFileSync(new URL("../../docs/routing.md", import.meta.url), "utf8");
    const section = readme.slice(readme.indexOf("## Models, providers and routing"));
    const yaml = /```yaml\n([\s\S]*?)```/.exec(section)![1].replaceAll("/models/Qwen3-8B", ensureDefaultModel());
    const config = readServeConfig(write(yaml), CLI, { OPENAI_API_KEY: "sk-example" });
    expect(config.models.map((m) => m.name)).toEqual(["qwen3-8b", "tiny"]);
    expect(config.models[0].engineOptions).toMatchObject({ kvCacheMemoryBytes: 3 * 1024 ** 3, quantization: "int8", maxNumSeqs: 32 });
    expect(config.routes[0]).toMatchObject({ name: "chat", burst: { to: "gpt-4o-mini", waitingOver: 8, ttftOverMs: 2500 } });
    expect(config.providers[1]).toMatchObject({ name: "replicas", balance: "prefix", replicas: expect.arrayContaining(["http://10.0.0.11:8000/v1"]), prefix: { numBlocks: 4, blockSize: 16 } });
  });
});
