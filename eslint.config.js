// Lint with import boundaries: the engine never imports HTTP code, the server never touches tensors,
// only runners import ONNX Runtime, and service/ knows neither HTTP nor the engine.
// NOTE: in a flat config, a later block's no-restricted-imports replaces an earlier one's for the same
// file, so every block below states all the restrictions its files have.
import tseslint from "typescript-eslint";

const httpModules = ["fastify", "undici", "node:http", "node:https", "http", "https"];
const ortModules = ["onnxruntime-node", "onnxruntime-common"];
const noOrt = ortModules.map((name) => ({ name, message: "only engine/runner/** imports ONNX Runtime" }));
const noHttp = (who) => httpModules.map((name) => ({ name, message: `${who} never imports HTTP code` }));

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
    files: ["**/*.ts"],
    ignores: ["engine/runner/**"],
    rules: { "no-restricted-imports": ["error", { paths: noOrt }] },
  },
  {
    files: ["engine/**/*.ts"],
    ignores: ["engine/runner/**"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: [...noHttp("engine/"), ...noOrt],
        patterns: [{ group: ["fastify*", "@fastify/*", "**/server/**", "**/service/**"], message: "engine/ never imports HTTP code, server/ or service/" }],
      }],
    },
  },
  {
    files: ["engine/runner/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: noHttp("engine/"),
        patterns: [{ group: ["fastify*", "@fastify/*", "**/server/**", "**/service/**"], message: "engine/ never imports HTTP code, server/ or service/" }],
      }],
    },
  },
  {
    files: ["server/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        paths: [...ortModules, "onnx-proto"].map((name) => ({ name, message: "server/ never touches tensors" })),
        patterns: [{
          group: ["**/engine/**", "!**/engine/index.ts", "**/models/**", "!**/models/index.ts"],
          message: "server/ imports only the engine's and models' public entry points (engine/index.ts, models/index.ts)",
        }],
      }],
    },
  },
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
