// Bundles the thinrelay CLI (dist/cli/thinrelay.mjs). Resolving and compiling the AWS
// SDK's few hundred modules one by one costs ~200 ms per run; one minified
// file keeps `process-image` on an already-done image well under 300 ms.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

// Chunk names carry content hashes: start clean so stale chunks never ship.
rmSync('dist/cli', { recursive: true, force: true });

const { version } = JSON.parse(readFileSync('package.json', 'utf8'));
let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  }).trim();
} catch {
  // Not a git checkout (e.g. a source tarball): the version alone identifies the build.
}

await build({
  // The download's worker thread (source/worker-download.ts) starts from its own entry,
  // sharing the SDK's chunk.
  entryPoints: {
    // entry.js turns the compile cache on, then imports main.js (its own chunk).
    thinrelay: 'dist/host-agent/src/cli/entry.js',
    'download-worker': 'dist/host-agent/src/source/download-worker.js',
  },
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
  target: 'node26',
  // Native addon: loaded from node_modules at run time.
  external: ['better-sqlite3'],
  define: {
    THINRELAY_BUILD: JSON.stringify({ version, commit }),
    THINRELAY_DOWNLOAD_WORKER: JSON.stringify('download-worker.mjs'),
  },
  banner: {
    js: "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
  },
  logLevel: 'warning',
});

// agent-config (writes /etc/thinrelay/agent.env from the stack's outputs): the
// package ships it as thinrelay-agent-config, so a host configures itself
// without a clone of the repository.
await build({
  entryPoints: { 'agent-config': 'dist/infra/bin/agent-config.js' },
  outdir: 'dist/cli',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  minify: true,
  sourcemap: 'linked',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
});
