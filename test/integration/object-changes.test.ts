/**
 * ObjectManager's one change sequence on real loop devices: a backend
 * operation that fails leaves the object in its intent state with the error
 * on its row (what recovery and an operator read), and the next state change
 * clears it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { silentLogger } from '../../host-agent/src/log.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import type { ObjectSpec } from '../../host-agent/src/storage/backend.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { ObjectManager } from '../../host-agent/src/storage/object-manager.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';

/** A loop backend whose next seal or remove fails the way a busy device does. */
class FlakyLoopBackend extends LoopBackend {
  failNext: 'seal' | 'remove' | null = null;
  override async seal(spec: ObjectSpec): Promise<void> {
    if (this.failNext === 'seal') {
      this.failNext = null;
      throw new Error('umount: target is busy');
    }
    return super.seal(spec);
  }
  override async remove(spec: ObjectSpec): Promise<void> {
    if (this.failNext === 'remove') {
      this.failNext = null;
      throw new Error('losetup: device is busy');
    }
    return super.remove(spec);
  }
}

test(
  'a failed storage operation stays in its intent state with its error; the next change clears it',
  { skip: needsRoot },
  async (t) => {
    const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-objchange-'));
    const store = StateStore.open(stateDir);
    t.after(() => {
      store.close();
      releaseStateDir(stateDir);
    });
    const backend = new FlakyLoopBackend({ stateDir, reserveBytes: 0 });
    const objects = new ObjectManager(store, backend, currentOwner(), silentLogger);
    const image = store.images.upsert({
      bucket: 'b',
      key: 'k',
      versionId: null,
      eTag: '"k"',
      size: 1,
    });
    const jobId = store.jobs.create(image.id, currentOwner(), ['unpack']).id;

    const { volume, mountpoint } = await objects.createVolumeForUnpack(
      { sizeBytes: 64 * 1024 ** 2, jobId },
      () => undefined,
    );
    writeFileSync(join(mountpoint, 'f'), 'x');
    await objects.markUnpacked(volume, () => undefined);
    assert.equal(store.objects.get(volume.id)!.last_error, null);

    let committed = false;
    backend.failNext = 'seal';
    await assert.rejects(
      objects.seal(volume, () => (committed = true)),
      /target is busy/,
    );
    const failed = store.objects.get(volume.id)!;
    assert.equal(failed.state, 'unpacked', 'the row stays where the operation started');
    assert.equal(failed.last_error, 'umount: target is busy');
    assert.equal(committed, false, "the caller's commit did not run");

    await objects.seal(volume, () => (committed = true));
    const sealed = store.objects.get(volume.id)!;
    assert.equal(sealed.state, 'sealed');
    assert.equal(sealed.last_error, null, 'the state change cleared the error');
    assert.equal(committed, true);

    backend.failNext = 'remove';
    await assert.rejects(objects.remove(sealed), /device is busy/);
    const removing = store.objects.get(volume.id)!;
    assert.equal(removing.state, 'removing', 'the removal intent stands for recovery');
    assert.equal(removing.last_error, 'losetup: device is busy');
    assert.equal(await objects.remove(removing), true, 'a second remove finishes it');
    const removed = store.objects.get(volume.id)!;
    assert.equal(removed.state, 'removed');
    assert.equal(removed.last_error, null);
  },
);
