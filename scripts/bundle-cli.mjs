// Bundles the thinrelay CLI into one file. Resolving and compiling the AWS
// SDK's few hundred modules one by one costs ~200 ms per run; one minified
// file keeps `process-image` on an already-done image well under 300 ms.
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/host-agent/src/cli/main.js'],
  outfile: 'dist/thinrelay.mjs',
  bundle: true,
  minify: true,
  sourcemap: 'linked',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Native addon: loaded from node_modules at run time.
  external: ['better-sqlite3'],
  banner: {
    js: "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
  },
  logLevel: 'warning',
});
