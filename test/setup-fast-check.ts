/**
 * Property tests explore new random cases on every local run, but CI replays one fixed seed,
 * so that a landing never hinges on luck. A failure prints its seed and path to replay.
 */
import fc from "fast-check";

if (process.env.CI) fc.configureGlobal({ seed: 20261123 });
