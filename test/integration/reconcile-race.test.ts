/**
 * Two runs reconciling the same leftovers at once (a restored backup, then
 * two process-image started together): both finish, the image is recorded,
 * and nothing is left attached or mounted that the store does not account for.
 * Reconcile is serialized per state dir; detaching a device another process
 * already detached is not an error.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { dbFileName } from '../../host-agent/src/store/db.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli } from '../helpers/cli.js';
import { assertHostMatchesStore, hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { smallRootfsTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-race';
const rounds = 5;

test(
  'two runs reconciling a restored backup at once both succeed',
  { skip: needsRoot },
  async (t) => {
    const s3 = await startS3Emulator();
    t.after(() => s3.stop());
    await s3.createBucket(bucket);
    await s3.putObject(bucket, 'images/a.tar', await smallRootfsTar('a'));
    const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-race-'));
    const backup = `${stateDir}.backup.db`;
    t.after(() => {
      releaseStateDir(stateDir);
      rmSync(backup, { force: true });
    });
    const env = {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
    };
    assert.equal((await runCli(['pool', 'create'], env)).code, 0);
    assert.equal((await runCli(['state', 'backup', backup], env)).code, 0);

    for (let round = 1; round <= rounds; round++) {
      const made = await runCli(['process-image', '--s3-key', 'images/a.tar'], env);
      assert.equal(made.code, 0, made.stderr);
      assert.ok(hostInventory(stateDir).loops.length > 0, 'a snapshot is attached');

      // docs/operating-a-host.md's restore: images.db* removed, the (empty) backup copied in.
      for (const f of [dbFileName, `${dbFileName}-wal`, `${dbFileName}-shm`])
        rmSync(join(stateDir, f), { force: true });
      copyFileSync(backup, join(stateDir, dbFileName));

      const both = await Promise.all([
        runCli(['process-image', '--s3-key', 'images/a.tar'], env),
        runCli(['process-image', '--s3-key', 'images/a.tar'], env),
      ]);
      for (const r of both) assert.equal(r.code, 0, `round ${round}: ${r.stderr}`);
      const store = StateStore.open(stateDir, { readonly: true });
      try {
        const image = store.images.list().find((i) => i.key === 'images/a.tar');
        assert.equal(image?.status, 'ready', `round ${round}: the image is recorded ready`);
      } finally {
        store.close();
      }
      assertHostMatchesStore(stateDir);
    }
  },
);
