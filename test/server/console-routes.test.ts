/** The console's files as the server serves them: open to anyone, only what is under console/ and the three vendor modules, with a strict CSP. */
import { describe, expect, it } from "vitest";
import { buildApp } from "../../server/app.ts";
import { FakeEngine, FakeTokenizer, makeContext } from "../helpers/server-fakes.ts";

describe("the console's routes", () => {
  it("serve the page and its modules to anyone, with a strict CSP, and nothing outside console/", async () => {
    const app = buildApp(makeContext({ engine: new FakeEngine(), tokenizer: new FakeTokenizer() }), { apiKeys: ["sk-static"], auth: { mode: "required" } });
    try {
      expect((await app.inject({ url: "/console" })).headers.location).toBe("/console/");
      const page = await app.inject({ url: "/console/" });
      expect(page.statusCode).toBe(200);
      expect(page.headers["content-type"]).toMatch(/^text\/html/);
      expect(page.headers["content-security-policy"]).toMatch(/default-src 'self'; script-src 'self';/);
      expect(page.body).toContain('<script type="module" src="app.js">');
      for (const [path, type] of [["/console/app.js", "text/javascript"], ["/console/pages/usage.js", "text/javascript"], ["/console/style.css", "text/css"], ["/console/vendor/preact.js", "text/javascript"], ["/console/vendor/uplot.css", "text/css"]]) {
        const response = await app.inject({ url: path });
        expect(response.statusCode, path).toBe(200);
        expect(response.headers["content-type"], path).toMatch(new RegExp(`^${type}`));
      }
      // preact/hooks is served pointing at the served preact, not at a bare name the browser can't resolve.
      expect((await app.inject({ url: "/console/vendor/preact-hooks.js" })).body).toMatch(/from"\.\/preact\.js"/);
      for (const path of ["/console/../package.json", "/console/%2e%2e/package.json", "/console/..%2fpackage.json", "/console/vendor/lodash.js", "/console/nope.js", "/console/pages"]) {
        // NOTE: a path the router resolves outside /console is an unknown API route: 401 here, where keys are required.
        const response = await app.inject({ url: path });
        expect([401, 404], path).toContain(response.statusCode);
        expect(response.body, path).not.toContain('"name": "tokenmill"');
      }
      // The APIs the console calls still need a key.
      expect((await app.inject({ url: "/v1/models" })).statusCode).toBe(401);
    } finally {
      await app.close();
    }
  });
});
