/**
 * The web console at /console: static files from the project's console/ folder and the few
 * browser modules it imports (Preact, htm, uPlot) straight from node_modules, as ES modules with
 * no build step, no CDN and nothing from outside the host (air-gapped hosts). The console reads
 * only the public APIs, with the key its user signs in with; these files themselves need none.
 */
import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyInstance, FastifyReply } from "fastify";
import { routeNotFound } from "../common/api-error.ts";

const CONSOLE_DIR = join(dirname(fileURLToPath(import.meta.url)), "../../console");
const require = createRequire(import.meta.url);
/** A package's folder, from its entry point (some export no package.json). */
function packageDir(name: string): string {
  const entry = require.resolve(name);
  const at = entry.lastIndexOf(`${sep}node_modules${sep}${name}${sep}`);
  return entry.slice(0, at + `${sep}node_modules${sep}${name}`.length);
}

/** The browser modules the console imports, by the path it imports them from. */
const VENDOR: Record<string, () => string> = {
  "preact.js": () => join(packageDir("preact"), "dist/preact.module.js"),
  "preact-hooks.js": () => join(packageDir("preact"), "hooks/dist/hooks.module.js"),
  "htm.js": () => join(packageDir("htm"), "dist/htm.module.js"),
  "uplot.js": () => join(packageDir("uplot"), "dist/uPlot.esm.js"),
  "uplot.css": () => join(packageDir("uplot"), "dist/uPlot.min.css"),
};

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml", ".png": "image/png", ".json": "application/json",
};

/** NOTE: the console's own scripts only ('self', no inline script); it talks to this server alone. */
const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache",
};

function send(reply: FastifyReply, file: string, body: Buffer | string = readFileSync(file)): FastifyReply {
  return reply.headers({ ...SECURITY_HEADERS, "content-type": TYPES[extname(file)] ?? "application/octet-stream" }).send(body);
}

/**
 * preact/hooks imports "preact" by name. An import map would resolve it, but an inline one is
 * an inline script to the CSP; so it is pointed at the served copy instead.
 */
const vendorBody = (name: string, path: string) =>
  (name === "preact-hooks.js" ? readFileSync(path, "utf8").replace(/from\s*"preact"/g, 'from"./preact.js"') : readFileSync(path));

export function registerConsoleRoutes(app: FastifyInstance): void {
  app.get("/console", async (_request, reply) => reply.redirect("/console/"));
  app.get("/console/", async (_request, reply) => send(reply, join(CONSOLE_DIR, "index.html")));
  app.get<{ Params: { file: string } }>("/console/vendor/:file", async (request, reply) => {
    const path = VENDOR[request.params.file];
    if (!path) throw routeNotFound("GET", request.url);
    return send(reply, path(), vendorBody(request.params.file, path()));
  });
  app.get<{ Params: { "*": string } }>("/console/*", async (request, reply) => {
    // NOTE: only files under console/, whatever the path says (no "..", no absolute paths); the page's routes are the hash's, so anything else is a 404.
    const path = normalize(join(CONSOLE_DIR, request.params["*"]));
    if (!path.startsWith(CONSOLE_DIR + sep) || !isFile(path)) throw routeNotFound("GET", request.url);
    return send(reply, path);
  });
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}
