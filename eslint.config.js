// Lint with import boundaries: the engine never imports HTTP code, the server never touches tensors.
import tseslint from "typescript-eslint";

const httpModules = ["fastify", "fastify/*", "@fastify/*", "undici", "node:http", "node:https", "http", "https"];
const tensorModules = ["onnxruntime-node", "onnxruntime-common", "onnx-proto"];

export default tseslint.config(
  { ignores: ["node_modules/**", ".cache/**", "results/**"] },
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-non-null-assertion": "off",
    },
  },
  {
    files: ["engine/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: httpModules.filter((m) => !m.includes("*")).map((name) => ({ name, message: "engine/ never imports HTTP code" })),
        patterns: [{ group: ["fastify*", "@fastify/*", "**/server/**"], message: "engine/ never imports HTTP code or server/" }],
      }],
    },
  },
  {
    files: ["server/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: tensorModules.map((name) => ({ name, message: "server/ never touches tensors" })),
        patterns: [{
          group: ["**/engine/**", "!**/engine/index.ts", "**/models/**", "!**/models/index.ts"],
          message: "server/ imports only the engine's and models' public entry points (engine/index.ts, models/index.ts)",
        }],
      }],
    },
  },
  {
    files: ["models/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        patterns: [{ group: ["fastify*", "**/server/**", "**/engine/**"], message: "models/ stands below the engine and the server" }],
      }],
    },
  },
);
