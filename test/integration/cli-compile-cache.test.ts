/**
 * Node's compile cache for the bundled CLI (host-agent/src/cli/compile-cache.ts):
 * a root run keeps it in /var/cache/thinrelay/compile-cache (root-only), for
 * the whole module graph — main.ts's chunk included, which is only possible
 * because the entry enables the cache before importing it; NODE_COMPILE_CACHE
 * moves it, NODE_DISABLE_COMPILE_CACHE=1 turns it off; a parent directory that
 * others can write to, or a link, is never used. Node's own debug output
 * (NODE_DEBUG_NATIVE=COMPILE_CACHE) says which file's cached code it accepted.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { compileCacheDir, compileCacheParent } from '../../host-agent/src/cli/compile-cache.js';
import { cliPath } from '../helpers/cli.js';
import { needsRoot } from '../helpers/root.js';

const moduleUrl = new URL('../../host-agent/src/cli/compile-cache.js', import.meta.url).href;

/** process.env without the caller's compile-cache settings, plus `extra`. */
function envWith(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_COMPILE_CACHE;
  delete env.NODE_DISABLE_COMPILE_CACHE;
  delete env.NODE_OPTIONS;
  return { ...env, ...extra };
}

/** `thinrelay --version` with Node's compile-cache debug lines on stderr. */
function version(extra: Record<string, string> = {}): { stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cliPath, '--version'], {
    env: envWith({ NODE_DEBUG_NATIVE: 'COMPILE_CACHE', ...extra }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^thinrelay \d+\.\d+\.\d+/);
  return r;
}

/** Cached code Node accepted for the CLI's main chunk, and the directory it came from. */
const mainAccepted = /V8 code cache for ESM file:\/\/\S+\/chunks\/main-[A-Z0-9]+\.mjs was accepted/;
const readFrom = (dir: string): RegExp =>
  new RegExp(`reading cache from ${dir.replaceAll('/', '\\/')}/v[^/]+/[0-9a-f]+ for ESM`);

describe('the CLI keeps Node’s compile cache', { skip: needsRoot }, () => {
  const scratch = mkdtempSync(join(tmpdir(), 'thinrelay-compile-cache-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  test('root runs: /var/cache/thinrelay/compile-cache, root-only, main chunk included', () => {
    version();
    const second = version();
    assert.match(second.stderr, readFrom(compileCacheDir));
    assert.match(second.stderr, mainAccepted);
    const st = statSync(compileCacheParent);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o077, 0, `${compileCacheParent} is root's alone`);
  });

  test('NODE_COMPILE_CACHE moves it; NODE_DISABLE_COMPILE_CACHE=1 turns it off', () => {
    const dir = join(scratch, 'elsewhere');
    version({ NODE_COMPILE_CACHE: dir });
    const moved = version({ NODE_COMPILE_CACHE: dir });
    assert.match(moved.stderr, readFrom(dir));
    assert.match(moved.stderr, mainAccepted);
    assert.doesNotMatch(moved.stderr, readFrom(compileCacheDir));
    const off = version({ NODE_DISABLE_COMPILE_CACHE: '1' });
    assert.doesNotMatch(off.stderr, /reading cache from/);
  });

  /** enableCliCompileCache(process.env, parent) in a fresh process: the directory, or 'none'. */
  function enabledWith(parent: string): string {
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const m = await import(${JSON.stringify(moduleUrl)});
         console.log(m.enableCliCompileCache(process.env, ${JSON.stringify(parent)}) ?? 'none');`,
      ],
      { env: envWith({}), encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  }

  test('a parent others can write to, or a link, is not used; a missing one is made 0700', () => {
    const fresh = join(scratch, 'fresh');
    assert.equal(enabledWith(fresh), join(fresh, 'compile-cache'));
    assert.equal(statSync(fresh).mode & 0o777, 0o700);

    const shared = join(scratch, 'shared');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    assert.equal(enabledWith(shared), 'none');

    const link = join(scratch, 'link');
    symlinkSync(fresh, link);
    assert.equal(enabledWith(link), 'none');
  });
});
