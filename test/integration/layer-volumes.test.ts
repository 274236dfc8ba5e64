/**
 * The storage seam for layer chains on real loop devices: a volume cloned
 * from a sealed parent holds the parent's filesystem (mounted without mkfs),
 * writes to it leave the parent untouched, a clone asked for more room is
 * made larger with its filesystem grown (never smaller), the clone is
 * recorded before it is made, and reconcile releases an interrupted clone
 * (a partial copy, or a clone whose owner died mid-apply) without touching
 * its parent.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { silentLogger } from '../../host-agent/src/log.js';
import { reconcile } from '../../host-agent/src/pipeline/reconcile.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { objectName } from '../../host-agent/src/storage/names.js';
import { ObjectManager } from '../../host-agent/src/storage/object-manager.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';

const MiB = 1024 ** 2;

function tempHost(t: { after(fn: () => void): void }): {
  stateDir: string;
  store: StateStore;
  objects: ObjectManager;
  backend: LoopBackend;
} {
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-layervol-'));
  const store = StateStore.open(stateDir);
  t.after(() => {
    store.close();
    releaseStateDir(stateDir);
  });
  const backend = new LoopBackend({ stateDir, reserveBytes: 0 });
  return {
    stateDir,
    store,
    backend,
    objects: new ObjectManager(store, backend, currentOwner(), silentLogger),
  };
}

/** A job row to hang volumes on. */
function newJob(store: StateStore, key: string): number {
  const image = store.images.upsert({
    bucket: 'b',
    key,
    versionId: null,
    eTag: `"${key}"`,
    size: 1,
  });
  return store.jobs.create(image.id, currentOwner(), ['unpack']).id;
}

test(
  'a layer volume is a clone of its sealed parent, mounted without mkfs; the parent stays as it was',
  { skip: needsRoot },
  async (t) => {
    const { stateDir, store, objects, backend } = tempHost(t);
    const jobId = newJob(store, 'k1');
    const base = await objects.createVolumeForUnpack(
      { sizeBytes: 128 * 1024 ** 2, jobId },
      () => undefined,
    );
    writeFileSync(join(base.mountpoint, 'lower'), 'from the base layer');
    await objects.markUnpacked(base.volume, () => undefined);
    await objects.seal(store.objects.get(base.volume.id)!);
    const parent = store.objects.get(base.volume.id)!;
    assert.equal(parent.state, 'sealed');

    const upper = await objects.cloneVolumeForApply({ parent, jobId }, () => undefined);
    assert.equal(upper.volume.parent_id, parent.id, 'the clone records its parent');
    assert.equal(upper.volume.state, 'unpacking');
    assert.equal(
      readFileSync(join(upper.mountpoint, 'lower'), 'utf8'),
      'from the base layer',
      "the parent's filesystem, not a fresh one",
    );
    writeFileSync(join(upper.mountpoint, 'upper'), 'from the second layer');
    writeFileSync(join(upper.mountpoint, 'lower'), 'changed above');
    await objects.markUnpacked(upper.volume, () => undefined);
    await objects.seal(store.objects.get(upper.volume.id)!);
    assert.deepEqual(hostInventory(stateDir).mounts, []);
    assert.deepEqual(hostInventory(stateDir).loops, []);

    // The parent, reopened on its own: unchanged.
    const again = await objects.cloneVolumeForApply({ parent, jobId }, () => undefined);
    assert.equal(readFileSync(join(again.mountpoint, 'lower'), 'utf8'), 'from the base layer');
    assert.equal(existsSync(join(again.mountpoint, 'upper')), false);
    await objects.remove(store.objects.get(again.volume.id)!);

    // Removing the parent leaves the clone usable (independent copies / thin snapshots).
    await objects.remove(store.objects.get(parent.id)!);
    const top = store.objects.get(upper.volume.id)!;
    const snap = await objects.createSnapshot({ volume: top, imageId: 1, jobId });
    const device = await objects.activate(snap);
    assert.match(device, /^\/dev\/loop\d+$/);
    await objects.remove(store.objects.get(snap.id)!);
    await objects.remove(store.objects.get(top.id)!);
    assert.deepEqual(await backend.inventory(), {
      objects: [],
      attached: [],
      mounted: [],
      strays: [],
    });
  },
);

test(
  'a clone asked for more room than its parent is made that large, its filesystem grown; never shrunk',
  { skip: needsRoot },
  async (t) => {
    const { stateDir, store, objects, backend } = tempHost(t);
    const jobId = newJob(store, 'k-grow');
    const small = 32 * MiB;
    const base = await objects.createVolumeForUnpack({ sizeBytes: small, jobId }, () => undefined);
    writeFileSync(join(base.mountpoint, 'lower'), 'from the base layer');
    await objects.markUnpacked(base.volume, () => undefined);
    await objects.seal(store.objects.get(base.volume.id)!);
    const parent = store.objects.get(base.volume.id)!;

    const grown = await objects.cloneVolumeForApply(
      { parent, jobId, sizeBytes: 256 * MiB },
      () => undefined,
    );
    assert.equal(grown.volume.size_bytes, 256 * MiB, 'the intent records the grown size');
    assert.equal(statSync(backend.fileOf(objects.spec(grown.volume))).size, 256 * MiB);
    const fs = statfsSync(grown.mountpoint);
    assert.ok(fs.blocks * fs.bsize > 200 * MiB, `the filesystem has ${fs.blocks * fs.bsize} bytes`);
    assert.equal(readFileSync(join(grown.mountpoint, 'lower'), 'utf8'), 'from the base layer');
    // More than the whole parent volume holds: it fits only because the filesystem grew.
    writeFileSync(join(grown.mountpoint, 'big.bin'), randomBytes(48 * MiB));
    await objects.markUnpacked(grown.volume, () => undefined);
    await objects.seal(store.objects.get(grown.volume.id)!);
    assert.equal(statSync(backend.fileOf(objects.spec(parent))).size, small, 'parent as it was');
    execFileSync('e2fsck', ['-f', '-n', backend.fileOf(objects.spec(grown.volume))], {
      stdio: 'ignore',
    });

    // A clone of the grown volume asked for less keeps its parent's size.
    const top = store.objects.get(grown.volume.id)!;
    const above = await objects.cloneVolumeForApply(
      { parent: top, jobId, sizeBytes: small },
      () => undefined,
    );
    assert.equal(above.volume.size_bytes, 256 * MiB, 'never shrunk');
    assert.equal(readFileSync(join(above.mountpoint, 'big.bin')).length, 48 * MiB);
    for (const id of [above.volume.id, top.id, parent.id])
      await objects.remove(store.objects.get(id)!);
    assert.deepEqual(hostInventory(stateDir).poolFiles, []);
    assert.deepEqual(hostInventory(stateDir).loops, []);
    assert.deepEqual(hostInventory(stateDir).mounts, []);
  },
);

test(
  'cloning refuses a parent that is not sealed (its filesystem may still change)',
  { skip: needsRoot },
  async (t) => {
    const { store, objects } = tempHost(t);
    const jobId = newJob(store, 'k2');
    const base = await objects.createVolumeForUnpack(
      { sizeBytes: 64 * 1024 ** 2, jobId },
      () => undefined,
    );
    await assert.rejects(
      objects.cloneVolumeForApply({ parent: base.volume, jobId }, () => undefined),
      /not sealed/,
    );
    await objects.remove(store.objects.get(base.volume.id)!);
  },
);

test(
  'reconcile releases an interrupted clone (dead owner, partial copy) and keeps its sealed parent',
  { skip: needsRoot },
  async (t) => {
    const { stateDir, store, objects, backend } = tempHost(t);
    const jobId = newJob(store, 'k3');
    const base = await objects.createVolumeForUnpack(
      { sizeBytes: 64 * 1024 ** 2, jobId },
      () => undefined,
    );
    await objects.markUnpacked(base.volume, () => undefined);
    await objects.seal(store.objects.get(base.volume.id)!);
    const parent = store.objects.get(base.volume.id)!;

    // A clone mid-apply whose process died: recorded, attached and mounted.
    const mid = await objects.cloneVolumeForApply({ parent, jobId }, () => undefined);
    writeFileSync(join(mid.mountpoint, 'half'), 'x');
    // A clone whose copy never finished: only its intent and a partial file.
    const cut = store.tx(() =>
      store.objects.createIntent(
        {
          kind: 'volume',
          backend: 'loop',
          sizeBytes: parent.size_bytes,
          parentId: parent.id,
          jobId,
        },
        currentOwner(),
      ),
    );
    writeFileSync(join(backend.poolDir, `${objectName('volume', cut.id)}.img.partial`), 'part');
    const dead = '1:1:not-this-boot';
    store.db
      .prepare(`UPDATE storage_objects SET owner = ? WHERE id IN (?, ?)`)
      .run(dead, mid.volume.id, cut.id);

    const actions = await reconcile({
      store,
      objects,
      owner: currentOwner(),
      logger: silentLogger,
    });
    const removed = actions.filter((a) => a.action === 'removed').map((a) => a.object);
    assert.ok(removed.includes(objectName('volume', mid.volume.id)), 'the mid-apply clone');
    assert.ok(removed.includes(objectName('volume', cut.id)), 'the partial clone');
    assert.equal(store.objects.get(mid.volume.id)!.state, 'removed');
    assert.equal(store.objects.get(cut.id)!.state, 'removed');
    assert.equal(store.objects.get(parent.id)!.state, 'sealed', 'the parent is kept');
    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.mounts, []);
    assert.deepEqual(inv.loops, []);
    assert.deepEqual(inv.poolFiles, [`${objectName('volume', parent.id)}.img`]);
    // Nothing left to do the second time.
    const twice = await reconcile({ store, objects, owner: currentOwner(), logger: silentLogger });
    assert.deepEqual(twice, []);
  },
);
