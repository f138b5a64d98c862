// Lint with import boundaries: the engine never imports HTTP code, the server never touches tensors,
// only runners import ONNX Runtime, and service/ knows neither HTTP nor the engine.
// NOTE: in a flat config, a later block's no-restricted-imports replaces an earlier one's for the same
// file, so every block below states all the restrictions its files have.
import tseslint from "typescript-eslint";

const httpModules = ["fastify", "undici", "node:http", "node:https", "http", "https"];
const ortModules = ["onnxruntime-node", "onnxruntime-common"];
const noOrt = ortModules.map((name) => ({ name, message: "only engine/runner/** imports ONNX Runtime" }));
const noHttp = (who) => httpModules.map((name) => ({ name, message: `${who} never imports HTTP code` }));

/** no-restricted-imports for engine files: no HTTP, server/ or service/, ONNX Runtime only in runner/, and nothing from the floors above. */
function engineFloor(files, above) {
  const floors = above.length > 0 ? [{ group: above.flatMap((dir) => [`../${dir}/*`, `../../${dir}/*`, `../${dir}/**`, `../../${dir}/**`]), message: `an import may only point down a floor: this file sits below ${above.join(", ")}/` }] : [];
  const base = [{ group: ["fastify*", "@fastify/*", "**/server/**", "**/service/**"], message: "engine/ never imports HTTP code, server/ or service/" }];
  return [
    { files, ignores: ["engine/runner/**"], rules: { "no-restricted-imports": ["error", { paths: [...noHttp("engine/"), ...noOrt], patterns: [...base, ...floors] }] } },
    { files: files.filter((f) => f.startsWith("engine/runner/")), rules: { "no-restricted-imports": ["error", { paths: noHttp("engine/"), patterns: [...base, ...floors] }] } },
  ].filter((block) => block.files.length > 0);
}

/**
 * no-restricted-imports for server files: no tensors, only the engine's and models' entry points,
 * and nothing from the floors above. The server's floors, lowest first: common/ (the error
 * catalog, the engine's entry, body parsing); the wire formats (openai/, anthropic/, responses/);
 * the backends (backends/, upstream/); chat/ (a chat run as pieces, local or upstream); http/
 * (the request path); routes/; then app.ts and serve.ts, which nothing imports.
 */
function serverFloor(files, above) {
  const top = files.some((f) => f.startsWith("server/*")) ? [] : ["../app.ts", "../serve.ts", "../../app.ts", "../../serve.ts"];
  const floors = above.length + top.length === 0 ? [] : [{ group: [...above.flatMap((dir) => [`../${dir}/*`, `../${dir}/**`]), ...top], message: `an import may only point down a floor: this file sits below ${[...above.map((d) => `${d}/`), "app.ts", "serve.ts"].join(", ")}` }];
  return [{
    files,
    rules: {
      "no-restricted-imports": ["error", {
        paths: [...ortModules, "onnx-proto"].map((name) => ({ name, message: "server/ never touches tensors" })),
        patterns: [{
          group: ["**/engine/**", "!**/engine/index.ts", "**/models/**", "!**/models/index.ts"],
          message: "server/ imports only the engine's and models' public entry points (engine/index.ts, models/index.ts)",
        }, ...floors],
      }],
    },
  }];
}

export default tseslint.config(
  { ignores: ["node_modules/**", ".cache/**", "results/**", "dist/**"] },
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-non-null-assertion": "off",
    },
  },
  {
    files: ["**/*.ts"],
    ignores: ["engine/runner/**"],
    rules: { "no-restricted-imports": ["error", { paths: noOrt }] },
  },
  // The engine's floors, lowest first: common/ (the shared types, errors and interfaces); the
  // parts (kv-cache/, sampling/, text/, grammar/, runner/); core/ (scheduler and engine core);
  // thread/ (the engine thread and its facade). An import may only point down a floor.
  ...engineFloor(["engine/common/**/*.ts"], ["kv-cache", "sampling", "text", "grammar", "runner", "core", "thread"]),
  ...engineFloor(["engine/kv-cache/**/*.ts", "engine/sampling/**/*.ts", "engine/text/**/*.ts", "engine/grammar/**/*.ts", "engine/runner/**/*.ts"], ["core", "thread"]),
  ...engineFloor(["engine/core/**/*.ts"], ["thread"]),
  ...engineFloor(["engine/thread/**/*.ts", "engine/*.ts"], []),
  {
    // Every HTTP error comes from the one catalog, server/common/api-error.ts.
    files: ["server/**/*.ts"],
    ignores: ["server/common/api-error.ts"],
    rules: {
      "no-restricted-syntax": ["error", {
        selector: "NewExpression[callee.name=/^(ApiError|BackendUnavailable)$/]",
        message: "make HTTP errors in the catalog (server/common/api-error.ts) and call them by name",
      }],
    },
  },
  {
    files: ["bench/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: noOrt,
        patterns: [{ group: ["../bin/*", "../bin/**"], message: "bench/ sits below the command line: bin/ imports bench/, never the other way" }],
      }],
    },
  },
  // The server's floors, lowest first (see serverFloor).
  ...serverFloor(["server/common/**/*.ts"], ["openai", "anthropic", "responses", "backends", "upstream", "chat", "http", "routes"]),
  ...serverFloor(["server/openai/**/*.ts", "server/anthropic/**/*.ts", "server/responses/**/*.ts"], ["backends", "upstream", "chat", "http", "routes"]),
  ...serverFloor(["server/backends/**/*.ts", "server/upstream/**/*.ts"], ["chat", "http", "routes"]),
  ...serverFloor(["server/chat/**/*.ts"], ["http", "routes"]),
  ...serverFloor(["server/http/**/*.ts"], ["routes"]),
  ...serverFloor(["server/routes/**/*.ts"], []),
  ...serverFloor(["server/*.ts"], []),
  {
    files: ["service/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: [...noHttp("service/"), ...noOrt],
        patterns: [{ group: ["fastify*", "@fastify/*", "**/server/**", "**/engine/**", "**/models/**"], message: "service/ knows neither fastify, the server, the engine nor the models" }],
      }],
    },
  },
  {
    files: ["models/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: noOrt,
        patterns: [{ group: ["fastify*", "**/server/**", "**/engine/**", "**/service/**"], message: "models/ stands below the engine and the server" }],
      }],
    },
  },
);
