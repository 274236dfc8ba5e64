/**
 * gc and reconcile against things the database never heard of: an orphan
 * volume file with a loop device attached, a mount of it, a partial
 * snapshot copy — all released; a foreign file in the pool is left alone.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';

test('gc releases orphans the database does not account for', { skip: needsRoot }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-gc-'));
  t.after(() => releaseStateDir(stateDir));
  const env = { THINRELAY_STATE_DIR: stateDir };
  assert.equal((await runCli(['pool', 'create'], env)).code, 0);
  const pool = join(stateDir, 'pool');
  const orphan = join(pool, 'vol-00009999.img');
  execFileSync('truncate', ['-s', '64M', orphan]);
  execFileSync('mkfs.ext4', ['-q', '-F', orphan]);
  const device = execFileSync('losetup', ['--find', '--show', orphan], { encoding: 'utf8' }).trim();
  const mnt = join(stateDir, 'mnt', 'vol-00009999');
  mkdirSync(mnt, { recursive: true });
  execFileSync('mount', [device, mnt]);
  writeFileSync(join(pool, 'snap-00009998.img.partial'), 'half a copy');
  writeFileSync(join(pool, 'NOTES.txt'), 'an operator left this here');

  const r = await runCli(['gc', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const { actions } = JSON.parse(r.stdout) as {
    actions: { object: string; action: string; reason: string }[];
  };
  assert.ok(
    actions.some(
      (a) => a.object === 'vol-00009999' && a.action === 'removed' && /orphan/.test(a.reason),
    ),
  );
  assert.ok(
    actions.some((a) => a.object.endsWith('snap-00009998.img.partial') && a.action === 'removed'),
  );
  const inv = hostInventory(stateDir);
  assert.deepEqual(inv.loops, []);
  assert.deepEqual(inv.mounts, []);
  assert.deepEqual(inv.poolFiles, ['NOTES.txt'], 'a file that is not ours is left alone');
  assert.equal(existsSync(mnt), false);
  assert.match(r.stderr, /unknown file in the pool left alone/);
});
