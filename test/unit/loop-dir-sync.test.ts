/**
 * The loop backend fsyncs its pool directory after each rename the store
 * relies on (a snapshot's copy, a clone's copy): the call is seen through
 * syncPoolDir, which runs the real fsyncDirectory, once per copy, after the
 * final name exists and the partial one is gone. A power cut itself cannot be
 * made here: this shows the fsync is issued in the right place, not that the
 * disk kept the rename.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { CloneSpec, ObjectSpec, SnapshotSpec } from '../../host-agent/src/storage/backend.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { fsyncDirectory } from '../../host-agent/src/sys/fsync-dir.js';

/** A loop backend that records the pool directory's entries at each of its fsyncs. */
class WatchedLoopBackend extends LoopBackend {
  readonly syncs: string[][] = [];
  protected override async syncPoolDir(): Promise<void> {
    this.syncs.push(readdirSync(this.poolDir).sort());
    await super.syncPoolDir();
  }
}

test('a snapshot and a clone each fsync the pool directory after their rename', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-dirsync-'));
  t.after(() => rmSync(stateDir, { recursive: true, force: true }));
  const backend = new WatchedLoopBackend({ stateDir, reserveBytes: 0 });
  const volume: ObjectSpec = {
    kind: 'volume',
    name: 'vol-00000001',
    sizeBytes: 1 << 20,
    thinId: null,
  };
  await backend.createVolume(volume);
  assert.deepEqual(backend.syncs, [], 'a new volume is not a rename');

  const snap: SnapshotSpec = { ...volume, kind: 'snapshot', name: 'snap-00000002', origin: volume };
  await backend.createSnapshot(snap);
  assert.deepEqual(backend.syncs, [['snap-00000002.img', 'vol-00000001.img']]);

  // Same size as its origin: no filesystem to grow, so no ext4 on the file is needed.
  const clone: CloneSpec = { ...volume, kind: 'volume', name: 'vol-00000003', origin: volume };
  await backend.createVolumeFrom(clone);
  assert.deepEqual(backend.syncs, [
    ['snap-00000002.img', 'vol-00000001.img'],
    ['snap-00000002.img', 'vol-00000001.img', 'vol-00000003.img'],
  ]);
});

test('fsyncDirectory opens a directory, and refuses a file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-dirsync-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await fsyncDirectory(dir);
  writeFileSync(join(dir, 'file'), '');
  await assert.rejects(fsyncDirectory(join(dir, 'file')), { code: 'ENOTDIR' });
});
