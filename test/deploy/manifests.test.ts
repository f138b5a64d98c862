/**
 * The Kubernetes manifests (deploy/kubernetes) checked as the API server would, with no cluster:
 * every object against its Kubernetes API schema (kubernetes-models' validators, the Gateway
 * API's HTTPRoute, and the GAIE InferencePool's CRD schema), strictly: a field the schema
 * doesn't know fails, as `kubectl apply --validate=strict` would. Each kustomization's files
 * exist and are all used, the GPU overlay's JSON patch applies and still validates, and the
 * pieces agree with each other and with tokenmill (ports, selectors, probes, the drain's
 * timing, the HPA's metric).
 */
import { readFileSync, readdirSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv } from "ajv";
import { parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import { z } from "zod";

const require = createRequire(import.meta.url);
const ROOT = fileURLToPath(new URL("../../deploy/kubernetes/", import.meta.url));

type Json = Record<string, unknown>;
type SchemaError = { instancePath: string; message?: string; keyword?: string; params?: unknown };
type SchemaValidate = ((data: unknown) => boolean) & { errors?: SchemaError[] | null };

/**
 * A kubernetes-models validator, by the OpenAPI definition's name. NOTE: the package exports its
 * model classes, not _schemas/, so the validator is required by its path (the classes copy the
 * object before validating it, which would hide its fields from strict()).
 */
const MODELS = join(dirname(require.resolve("kubernetes-models/apps/v1/Deployment")), "..", "..");
const schema = (name: string): SchemaValidate => require(join(MODELS, "_schemas", `${name}.js`)).validate;
const objectMeta = createRequire(join(MODELS, "package.json"))("@kubernetes-models/apimachinery/_schemas/IoK8sApimachineryPkgApisMetaV1ObjectMeta").validate as SchemaValidate;

/**
 * The GAIE InferencePool (inference.networking.k8s.io/v1), from its API reference
 * (gateway-api-inference-extension.sigs.k8s.io/reference/spec): selector.matchLabels,
 * targetPorts (1 to 8 port numbers), appProtocol, endpointPickerRef (name, kind, group, port, failureMode).
 */
const INFERENCE_POOL = {
  type: "object", required: ["apiVersion", "kind", "metadata", "spec"], additionalProperties: false,
  properties: {
    apiVersion: { const: "inference.networking.k8s.io/v1" }, kind: { const: "InferencePool" },
    metadata: { type: "object", required: ["name"], properties: { name: { type: "string", minLength: 1 } } },
    spec: {
      type: "object", required: ["selector", "targetPorts", "endpointPickerRef"], additionalProperties: false,
      properties: {
        selector: {
          type: "object", required: ["matchLabels"], additionalProperties: false,
          properties: { matchLabels: { type: "object", additionalProperties: { type: "string", maxLength: 63 } } },
        },
        targetPorts: {
          type: "array", minItems: 1, maxItems: 8,
          items: { type: "object", required: ["number"], additionalProperties: false, properties: { number: { type: "integer", minimum: 1, maximum: 65535 } } },
        },
        appProtocol: { enum: ["http", "kubernetes.io/h2c"] },
        endpointPickerRef: {
          type: "object", required: ["name"], additionalProperties: false,
          properties: {
            name: { type: "string", minLength: 1, maxLength: 253 }, kind: { type: "string" }, group: { type: "string" },
            port: { type: "object", required: ["number"], additionalProperties: false, properties: { number: { type: "integer", minimum: 1, maximum: 65535 } } },
            failureMode: { enum: ["FailOpen", "FailClose"] },
          },
        },
      },
    },
  },
};
const ajv = new Ajv({ allErrors: true, strict: false });
// The OpenAPI formats the Gateway API's schema uses, checked as Kubernetes checks them.
ajv.addFormat("int32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
ajv.addFormat("int64", { type: "number", validate: (n: number) => Number.isInteger(n) });
ajv.addFormat("date-time", { type: "string", validate: (t: string) => !Number.isNaN(Date.parse(t)) });
const inferencePool = ajv.compile(INFERENCE_POOL) as SchemaValidate;
/**
 * The Gateway API's HTTPRoute (v1) schema, as @kubernetes-models/gateway-api carries it (its
 * module keeps it in a constant it does not export, so it is read from the module's text), made
 * strict: an object with properties and no additionalProperties refuses fields it doesn't list.
 */
function httpRouteSchema(): object {
  const text = readFileSync(require.resolve("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute"), "utf8");
  const start = text.indexOf("const schema = ") + "const schema = ".length;
  const parsed = JSON.parse(text.slice(start, text.indexOf("\n};", start) + 2)) as Json;
  const strictify = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(strictify);
    if (node === null || typeof node !== "object") return node;
    const out = Object.fromEntries(Object.entries(node).map(([k, v]) => [k, k === "properties" ? Object.fromEntries(Object.entries(v as Json).map(([pk, pv]) => [pk, strictify(pv)])) : strictify(v)]));
    if ("$ref" in out) return { type: "object" };
    if ("properties" in out && !("additionalProperties" in out)) out.additionalProperties = false;
    return out;
  };
  return strictify(parsed) as object;
}
const httpRoute = ajv.compile(httpRouteSchema()) as SchemaValidate;

const VALIDATORS: Record<string, (object: Json) => void> = {
  "apps/v1 Deployment": strict(schema("IoK8sApiAppsV1Deployment")),
  "v1 Service": strict(schema("IoK8sApiCoreV1Service")),
  "v1 Secret": strict(schema("IoK8sApiCoreV1Secret")),
  "v1 PersistentVolumeClaim": strict(schema("IoK8sApiCoreV1PersistentVolumeClaim")),
  "v1 ServiceAccount": strict(schema("IoK8sApiCoreV1ServiceAccount")),
  "policy/v1 PodDisruptionBudget": strict(schema("IoK8sApiPolicyV1PodDisruptionBudget")),
  "autoscaling/v2 HorizontalPodAutoscaler": strict(schema("IoK8sApiAutoscalingV2HorizontalPodAutoscaler")),
  "rbac.authorization.k8s.io/v1 Role": strict(schema("IoK8sApiRbacV1Role")),
  "rbac.authorization.k8s.io/v1 RoleBinding": strict(schema("IoK8sApiRbacV1RoleBinding")),
  "gateway.networking.k8s.io/v1 HTTPRoute": (object) => {
    checked(httpRoute)(object);
    strict(objectMeta)(object.metadata as Json);
  },
  "inference.networking.k8s.io/v1 InferencePool": (object) => {
    checked(inferencePool)(object);
    strict(objectMeta)(object.metadata as Json);
  },
};

/** An ajv validator whose schema is strict already (additionalProperties: false): it fails, naming where. */
function checked(validate: SchemaValidate): (object: Json) => void {
  return (object) => {
    if (!validate(object)) throw new Error(`${nameOf(object)}: ${(validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`).join("; ")}`);
  };
}

/**
 * A validator made strict: the object goes in behind proxies that note every property the
 * validator reads (an object it enumerates, a map such as labels, counts as read whole). A
 * property never read is one the schema doesn't know: the wrong field the API server refuses.
 */
function strict(validate: SchemaValidate, errorsOf: () => SchemaValidate["errors"] = () => validate.errors): (object: Json) => void {
  return (object) => {
    const read = new Map<object, Set<PropertyKey> | "all">();
    const wrap = (value: unknown): unknown => {
      if (value === null || typeof value !== "object") return value;
      if (!read.has(value)) read.set(value, new Set());
      return new Proxy(value, {
        get(target, key, receiver) {
          const seen = read.get(target);
          if (seen !== "all") seen!.add(key);
          return wrap(Reflect.get(target, key, receiver));
        },
        has(target, key) {
          const seen = read.get(target);
          if (seen !== "all") seen!.add(key);
          return Reflect.has(target, key);
        },
        ownKeys(target) {
          read.set(target, "all");
          return Reflect.ownKeys(target);
        },
      });
    };
    if (!validate(wrap(object))) {
      throw new Error(`${nameOf(object)}: ${(errorsOf() ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`).join("; ")}`);
    }
    const unknown: string[] = [];
    const walk = (value: unknown, path: string) => {
      if (value === null || typeof value !== "object") return;
      const seen = read.get(value);
      for (const [key, child] of Object.entries(value)) {
        if (!Array.isArray(value) && seen !== "all" && !seen?.has(key)) unknown.push(`${path}/${key}`);
        else walk(child, `${path}/${key}`);
      }
    };
    walk(object, "");
    if (unknown.length > 0) throw new Error(`${nameOf(object)}: unknown field ${unknown.join(", ")}`);
  };
}

const nameOf = (object: Json) => `${object.kind} ${(object.metadata as Json | undefined)?.name ?? "?"}`;

function validate(object: Json): void {
  const key = `${object.apiVersion} ${object.kind}`;
  const check = VALIDATORS[key];
  if (!check) throw new Error(`no schema for ${key}`);
  check(object);
}

const yamlFiles = (dir: string): string[] => readdirSync(dir).flatMap((name) => {
  const path = join(dir, name);
  return statSync(path).isDirectory() ? yamlFiles(path) : name.endsWith(".yaml") ? [path] : [];
});
const documents = (path: string): Json[] => parseAllDocuments(readFileSync(path, "utf8")).map((doc) => doc.toJS() as Json).filter(Boolean);

const kustomizationSchema = z.strictObject({
  apiVersion: z.literal("kustomize.config.k8s.io/v1beta1"), kind: z.literal("Kustomization"),
  resources: z.array(z.string()).min(1),
  labels: z.array(z.strictObject({ pairs: z.record(z.string(), z.string()) })).optional(),
  patches: z.array(z.strictObject({ target: z.strictObject({ kind: z.string(), name: z.string() }), path: z.string() })).optional(),
});

/** The objects a kustomization builds: its resources (folders recursively), with its JSON 6902 patches applied. */
function build(dir: string, used: Set<string>): Json[] {
  const file = join(dir, "kustomization.yaml");
  used.add(file);
  const k = kustomizationSchema.parse(documents(file)[0]);
  const objects = k.resources.flatMap((resource) => {
    const path = join(dir, resource);
    if (statSync(path).isDirectory()) return build(path, used);
    used.add(path);
    return documents(path);
  });
  for (const patch of k.patches ?? []) {
    const path = join(dir, patch.path);
    used.add(path);
    const target = objects.find((o) => o.kind === patch.target.kind && (o.metadata as Json).name === patch.target.name);
    expect(target, `${relative(ROOT, file)}: its patch's target ${patch.target.kind} ${patch.target.name}`).toBeDefined();
    applyJsonPatch(target!, documents(path)[0] as unknown as { op: string; path: string; value?: unknown }[]);
  }
  return objects.map((o) => structuredClone(o));
}

/** RFC 6902 add, replace and remove, as kustomize applies them. */
function applyJsonPatch(object: Json, ops: { op: string; path: string; value?: unknown }[]): void {
  for (const { op, path, value } of ops) {
    const keys = path.split("/").slice(1).map((k) => k.replaceAll("~1", "/").replaceAll("~0", "~"));
    const last = keys.pop()!;
    let parent: unknown = object;
    for (const key of keys) {
      parent = (parent as Record<string, unknown>)[key];
      if (parent === undefined) throw new Error(`patch ${op} ${path}: ${key} is not there`);
    }
    const container = parent as Record<string, unknown> & unknown[];
    if (op === "add" && Array.isArray(container)) container.splice(last === "-" ? container.length : Number(last), 0, value);
    else if (op === "add") container[last] = value;
    else if (op === "replace") {
      if (!(last in container)) throw new Error(`patch replace ${path}: nothing to replace`);
      container[last] = value;
    } else if (op === "remove") delete container[last];
    else throw new Error(`patch op ${op} is not supported`);
  }
}

const container = (deployment: Json) => ((deployment.spec as Json).template as { spec: { containers: Json[] } }).spec.containers[0];
const find = (objects: Json[], kind: string, name?: string) => objects.find((o) => o.kind === kind && (name === undefined || (o.metadata as Json).name === name))!;

describe("deploy/kubernetes", () => {
  const used = new Set<string>();
  const cpu = build(ROOT, used);
  const gpu = build(join(ROOT, "gpu"), used);
  const gateway = build(join(ROOT, "gateway"), used);

  it("every object validates against its Kubernetes API schema, strictly, and every file is in a kustomization", () => {
    for (const object of [...cpu, ...gpu, ...gateway]) validate(object);
    expect(cpu.map((o) => o.kind).sort()).toEqual(["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "Service"]);
    expect(gateway.map((o) => o.kind).sort()).toEqual(["Deployment", "HTTPRoute", "InferencePool", "Role", "RoleBinding", "Service", "ServiceAccount"]);
    expect(yamlFiles(ROOT).filter((path) => !used.has(path)).map((path) => relative(ROOT, path))).toEqual([]);
  });

  it("catches a wrong field, a wrong type and a missing field, naming where", () => {
    const deployment = structuredClone(find(cpu, "Deployment"));
    (deployment.spec as Json).replica = 3;
    expect(() => validate(deployment)).toThrow(/Deployment tokenmill: unknown field \/spec\/replica/);
    const typo = structuredClone(find(cpu, "Deployment"));
    (container(typo).readinessProbe as Json).httpGets = (container(typo).readinessProbe as Json).httpGet;
    expect(() => validate(typo)).toThrow(/unknown field \/spec\/template\/spec\/containers\/0\/readinessProbe\/httpGets/);
    const wrongType = structuredClone(find(cpu, "Deployment"));
    (wrongType.spec as Json).replicas = "3";
    expect(() => validate(wrongType)).toThrow(/\/spec\/replicas type \{"type":"integer"\}/);
    const missing = structuredClone(find(cpu, "Deployment"));
    delete (missing.spec as Json).selector;
    expect(() => validate(missing)).toThrow(/\/spec required \{"missingProperty":"selector"\}/);
    const pool = structuredClone(find(gateway, "InferencePool"));
    (pool.spec as Json).targetPort = 8000;
    expect(() => validate(pool)).toThrow(/InferencePool tokenmill/);
    const route = structuredClone(find(gateway, "HTTPRoute"));
    (route.spec as Json).rule = [];
    expect(() => validate(route)).toThrow(/HTTPRoute tokenmill: \/spec must NOT have additional properties \{"additionalProperty":"rule"\}/);
    expect(() => validate({ apiVersion: "apps/v1beta1", kind: "Deployment", metadata: { name: "old" } })).toThrow(/no schema for apps\/v1beta1 Deployment/);
  });

  it("drains: readiness is /health, liveness only the socket, and the grace period outlasts preStop plus --shutdown-timeout", () => {
    const deployment = find(cpu, "Deployment");
    const c = container(deployment);
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: "/health", port: "http" } });
    expect(c.livenessProbe).toMatchObject({ tcpSocket: { port: "http" } });
    const args = c.args as string[];
    const shutdownTimeout = Number(args[args.indexOf("--shutdown-timeout") + 1]);
    const preStop = Number(((c.lifecycle as Json).preStop as { exec: { command: string[] } }).exec.command[1]);
    const grace = ((deployment.spec as Json).template as { spec: { terminationGracePeriodSeconds: number } }).spec.terminationGracePeriodSeconds;
    expect(grace).toBeGreaterThan(preStop + shutdownTimeout);
    expect(args).toContain("$(TOKENMILL_DB_URL)");
    expect((c.env as { name: string }[]).map((e) => e.name)).toContain("TOKENMILL_DB_URL");
  });

  it("the pieces agree: selectors, ports, the Secret's keys, the HPA's metric, the GPU overlay, the pool's picker and route", () => {
    const deployment = find(cpu, "Deployment");
    const labels = ((deployment.spec as Json).template as { metadata: { labels: Record<string, string> } }).metadata.labels;
    const selects = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
    expect(selects(((deployment.spec as Json).selector as { matchLabels: Record<string, string> }).matchLabels)).toBe(true);
    expect(selects((find(cpu, "Service").spec as { selector: Record<string, string> }).selector)).toBe(true);
    expect(selects((find(cpu, "PodDisruptionBudget").spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels)).toBe(true);
    const port = (container(deployment).ports as { containerPort: number }[])[0].containerPort;
    expect(port).toBe(8000);
    const secret = find(cpu, "Secret");
    for (const env of container(deployment).env as { valueFrom?: { secretKeyRef?: { name: string; key: string } } }[]) {
      const ref = env.valueFrom?.secretKeyRef;
      if (ref) expect(Object.keys(secret.stringData as Json)).toContain(ref.key);
    }
    const hpa = find(cpu, "HorizontalPodAutoscaler").spec as { scaleTargetRef: { name: string }; metrics: { pods: { metric: { name: string } } }[] };
    expect(hpa.scaleTargetRef.name).toBe("tokenmill");
    const metrics = readFileSync(fileURLToPath(new URL("../../server/http/metrics.ts", import.meta.url)), "utf8");
    expect(metrics).toContain(`"${hpa.metrics[0].pods.metric.name}"`);

    const gpuContainer = container(find(gpu, "Deployment"));
    expect(gpuContainer.args as string[]).toEqual([...(container(deployment).args as string[]), "--device", "webgpu"]);
    expect((gpuContainer.resources as { limits: Json }).limits["nvidia.com/gpu"]).toBe("1");
    // The overlay patches a copy: the CPU Deployment is unchanged.
    expect((container(deployment).resources as { limits: Json }).limits["nvidia.com/gpu"]).toBeUndefined();

    const pool = find(gateway, "InferencePool").spec as { selector: { matchLabels: Record<string, string> }; targetPorts: { number: number }[]; endpointPickerRef: { name: string; port: { number: number } } };
    expect(selects(pool.selector.matchLabels)).toBe(true);
    expect(pool.targetPorts).toEqual([{ number: port }]);
    const picker = find(gateway, "Service", pool.endpointPickerRef.name);
    expect((picker.spec as { ports: { port: number }[] }).ports.map((p) => p.port)).toContain(pool.endpointPickerRef.port.number);
    const route = find(gateway, "HTTPRoute").spec as { rules: { backendRefs: { kind: string; name: string }[] }[] };
    expect(route.rules[0].backendRefs).toEqual([expect.objectContaining({ kind: "InferencePool", name: "tokenmill" })]);
  });
});
