// Bundles the thinrelay CLI (dist/cli/thinrelay.mjs). Resolving and compiling the AWS
// SDK's few hundred modules one by one costs ~200 ms per run; one minified
// file keeps `process-image` on an already-done image well under 300 ms.
import { rmSync } from 'node:fs';
import { build } from 'esbuild';

// Chunk names carry content hashes: start clean so stale chunks never ship.
rmSync('dist/cli', { recursive: true, force: true });

await build({
  entryPoints: { thinrelay: 'dist/host-agent/src/cli/main.js' },
  outdir: 'dist/cli',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  // The SDK (behind a dynamic import) goes to its own chunk: listings
  // never compile it.
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  minify: true,
  sourcemap: 'linked',
  platform: 'node',
  // The SDK's ES module builds: esbuild can drop what the CLI never calls
  // (the CommonJS builds are one module per package, kept whole).
  mainFields: ['module', 'main'],
  format: 'esm',
  target: 'node20',
  // Native addon: loaded from node_modules at run time.
  external: ['better-sqlite3'],
  banner: {
    js: "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
  },
  logLevel: 'warning',
});
