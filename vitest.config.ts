import { defineConfig } from "vitest/config";

/**
 * Tests that start real servers, processes, PostgreSQL, WebGPU (lavapipe) or the engine thread
 * on the real model. Everything else is fast: fakes, `app.inject()`, the graph and the
 * reference forward pass on tiny checkpoints. `npm test` runs both projects; `npm run
 * test:fast` runs the fast one for the inner loop.
 */
const E2E = [
  "test/engine/engine-e2e.test.ts", "test/engine/engine-restart.test.ts", "test/engine/engine-sampling-property.test.ts", "test/engine/webgpu-runner.test.ts",
  "test/engine/tokenizer-pool.test.ts", "test/engine/grammar-pool.test.ts",
  "test/server/*-e2e.test.ts", "test/server/server-hostile.test.ts", "test/server/server-restart.test.ts", "test/server/admin-access.test.ts", "test/server/upstream-faults.test.ts",
  "test/service/*-e2e.test.ts", "test/service/ledger-*.test.ts", "test/service/*-replicas.test.ts", "test/service/limits-store.test.ts", "test/service/service-store.test.ts",
  "test/bench/bench-cli.test.ts", "test/bin/*-cli.test.ts", "test/bin/*-e2e.test.ts", "test/bin/cli-flags.test.ts", "test/deploy/*-e2e.test.ts",
];

const shared = {
  testTimeout: 120_000,
  hookTimeout: 300_000,
  globalSetup: ["test/global-setup.ts"],
  setupFiles: ["test/setup-fast-check.ts"],
};

export default defineConfig({
  test: {
    pool: "forks",
    // NOTE: two cores; the real-model tests each spin up ORT sessions, so run files one or two at a time.
    maxWorkers: 2,
    projects: [
      { test: { ...shared, name: "fast", include: ["test/**/*.test.ts"], exclude: E2E } },
      { test: { ...shared, name: "e2e", include: E2E } },
    ],
  },
});
