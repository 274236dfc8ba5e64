/**
 * The devmapper backend against a real kernel (in the VM): pool create,
 * status and destroy; a volume and a snapshot through their whole life; the
 * pool's transaction id moving once per change; EBUSY retries; device nodes
 * without udev; a pool left behind by a reboot coming back.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../host-agent/src/config.js';
import { silentLogger } from '../../host-agent/src/log.js';
import type { ObjectSpec, SnapshotSpec } from '../../host-agent/src/storage/backend.js';
import { DevmapperBackend } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { createBackend } from '../../host-agent/src/storage/index.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import {
  devmapperEnv,
  dmHostInventory,
  freshStateDir,
  poolNameOf,
  poolThinIds,
  poolTransactionId,
  releaseDmStateDir,
} from './dm-host.js';

const mib = 1024 ** 2;

function open(stateDir: string): { backend: DevmapperBackend; store: StateStore } {
  const store = StateStore.open(stateDir);
  const config = loadConfig({}, devmapperEnv(stateDir));
  const backend = createBackend(config, { store, owner: currentOwner(), logger: silentLogger });
  assert.ok(backend instanceof DevmapperBackend);
  return { backend, store };
}

const volume: ObjectSpec = {
  kind: 'volume',
  name: 'vol-00000001',
  sizeBytes: 256 * mib,
  thinId: 1,
};
const snapshot: SnapshotSpec = {
  kind: 'snapshot',
  name: 'snap-00000002',
  sizeBytes: 256 * mib,
  thinId: 2,
  origin: volume,
};

describe('devmapper backend', { skip: needsRoot }, () => {
  let stateDir: string;
  let backend: DevmapperBackend;
  let store: StateStore;

  before(() => {
    stateDir = freshStateDir('thinrelay-dmb-');
    ({ backend, store } = open(stateDir));
  });
  after(() => {
    store.close();
    releaseDmStateDir(stateDir);
  });

  test('pool create: loop files, 128 KiB blocks, error_if_no_space; status reads usage', async () => {
    const status = await backend.createPool({ sizeBytes: 512 * mib });
    assert.equal(status.exists, true);
    assert.equal(status.healthy, true, status.detail);
    assert.equal(status.dataTotalBytes, 512 * mib);
    assert.ok(status.metadataTotalBytes! >= 8 * mib);
    assert.ok(status.metadataUsedBytes! > 0);
    const table = execFileSync('dmsetup', ['table', backend.poolName], { encoding: 'utf8' });
    assert.match(table, /^0 1048576 thin-pool \d+:\d+ \d+:\d+ 256 256 1 error_if_no_space\s*$/);
    assert.equal(dmHostInventory(stateDir).loops.length, 2);
    assert.deepEqual(poolThinIds(backend.poolName), []);
    assert.equal(store.poolJournal.get(backend.poolName)?.transaction_id, 0);
    // A second create refuses: the pool exists.
    await assert.rejects(backend.createPool({ sizeBytes: 64 * mib }), /already defined/);
  });

  test('volume → snapshot → activate → remove; one transaction id per change', async () => {
    const t0 = poolTransactionId(backend.poolName);
    await backend.createVolume(volume);
    assert.equal(poolTransactionId(backend.poolName), t0 + 1);
    const { mountpoint } = await backend.mountForUnpack(volume);
    writeFileSync(join(mountpoint, 'hello'), 'from the volume\n');
    await backend.flush(volume);
    await backend.seal(volume);
    assert.deepEqual(dmHostInventory(stateDir).mounts, []);
    assert.ok(!existsSync(backend.devicePath(volume)), 'sealed volume is deactivated');

    await backend.createSnapshot(snapshot);
    assert.equal(poolTransactionId(backend.poolName), t0 + 2);
    assert.deepEqual(poolThinIds(backend.poolName), [1, 2]);
    const device = await backend.activate(snapshot);
    assert.equal(device, `/dev/mapper/${backend.prefix}snap-00000002`);
    // No udev in the VM: the node is there because we made it.
    assert.ok(!existsSync('/run/udev/control'), 'this test runs without udev');
    assert.ok(existsSync(device));
    assert.equal(await backend.activate(snapshot), device, 'activate is idempotent');
    withMounted(device, (root) =>
      assert.equal(readFileSync(join(root, 'hello'), 'utf8'), 'from the volume\n'),
    );
    const inv = await backend.inventory();
    assert.deepEqual(
      inv.objects.map((o) => o.thinId),
      [1, 2],
    );
    assert.deepEqual(inv.attached, [{ name: 'snap-00000002', devicePath: device, thinId: 2 }]);

    await backend.deactivate(snapshot);
    assert.ok(!existsSync(device), 'node removed with the device');
    await backend.remove(snapshot);
    await backend.remove(volume);
    assert.deepEqual(poolThinIds(backend.poolName), []);
    assert.equal(poolTransactionId(backend.poolName), t0 + 4);
    assert.equal(store.poolJournal.get(backend.poolName)?.transaction_id, t0 + 4);
    assert.equal(store.poolJournal.get(backend.poolName)?.open_op, null);
    // Removing again is a no-op (the id is gone: nothing is committed).
    await backend.remove(volume);
    assert.equal(poolTransactionId(backend.poolName), t0 + 4);
  });

  test('snapshot of an active origin: suspended and resumed around create_snap', async () => {
    const vol: ObjectSpec = { ...volume, name: 'vol-00000003', thinId: 3 };
    await backend.createVolume(vol);
    const { mountpoint } = await backend.mountForUnpack(vol);
    writeFileSync(join(mountpoint, 'live'), 'x');
    await backend.flush(vol);
    const snap: SnapshotSpec = { ...snapshot, name: 'snap-00000004', thinId: 4, origin: vol };
    await backend.createSnapshot(snap);
    const info = execFileSync(
      'dmsetup',
      ['info', '-c', '--noheadings', '-o', 'attr', `${backend.prefix}vol-00000003`],
      {
        encoding: 'utf8',
      },
    );
    assert.ok(!info.includes('s'), `origin resumed (attr ${info.trim()})`);
    await backend.remove(snap);
    await backend.remove(vol);
    assert.deepEqual(poolThinIds(backend.poolName), []);
    assert.deepEqual(dmHostInventory(stateDir).mounts, []);
  });

  test('remove retries while the device is busy, and fails cleanly when it stays busy', async () => {
    const vol: ObjectSpec = { ...volume, name: 'vol-00000005', thinId: 5 };
    const snap: SnapshotSpec = { ...snapshot, name: 'snap-00000006', thinId: 6, origin: vol };
    await backend.createVolume(vol);
    await backend.createSnapshot(snap);
    const device = await backend.activate(snap);
    // Another process holds the device open for a moment.
    const holder = spawn('sh', ['-c', `exec 3<${device}; exec sleep 0.7`], { stdio: 'ignore' });
    const holderExited = new Promise((r) => holder.once('exit', r));
    await new Promise((r) => setTimeout(r, 200));
    await backend.remove(snap);
    assert.ok(!existsSync(device));
    await holderExited;

    const snap2: SnapshotSpec = { ...snap, name: 'snap-00000007', thinId: 7 };
    await backend.createSnapshot(snap2);
    const device2 = await backend.activate(snap2);
    const stuck = spawn('sh', ['-c', `exec 3<${device2}; exec sleep 60`], { stdio: 'ignore' });
    const stuckExited = new Promise((r) => stuck.once('exit', r));
    try {
      await new Promise((r) => setTimeout(r, 200));
      await assert.rejects(backend.remove(snap2), /busy/i);
      assert.ok(existsSync(device2), 'still there: nothing half-done');
      assert.deepEqual(poolThinIds(backend.poolName), [5, 7]);
      assert.equal(store.poolJournal.get(backend.poolName)?.owner, null, 'pool released');
    } finally {
      stuck.kill('SIGKILL');
      await stuckExited;
    }
    await backend.remove(snap2);
    await backend.remove(vol);
    assert.deepEqual(poolThinIds(backend.poolName), []);
  });

  test('after a reboot (tables and loops gone, files kept) prepare reloads the pool over its metadata', async () => {
    const vol: ObjectSpec = { ...volume, name: 'vol-00000008', thinId: 8 };
    await backend.createVolume(vol);
    const tid = poolTransactionId(backend.poolName);
    execFileSync('dmsetup', ['remove', backend.poolName]);
    for (const l of dmHostInventory(stateDir).loops) execFileSync('losetup', ['-d', l]);
    assert.deepEqual(dmHostInventory(stateDir).devices, []);
    const status = await backend.poolStatus();
    assert.equal(status.exists, false);
    assert.match(status.detail, /not loaded/);

    const actions = await backend.prepare();
    assert.deepEqual(
      actions.map((a) => a.action),
      ['reloaded'],
    );
    assert.equal(poolTransactionId(backend.poolName), tid, 'same metadata, not re-zeroed');
    assert.deepEqual(poolThinIds(backend.poolName), [8]);
    await backend.remove(vol);
  });

  test('ensureSpace refuses below the free-space floors; destroy refuses a non-empty pool, then tears down', async () => {
    await backend.ensureSpace(64 * mib);
    await assert.rejects(backend.ensureSpace(600 * mib), /LOW_SPACE|can take/);
    const strict = new DevmapperBackend({
      ...backendOptions(stateDir, store),
      minFreeData: { percent: 95 },
    });
    await assert.rejects(strict.ensureSpace(64 * mib), /free-space floor/);

    const vol: ObjectSpec = { ...volume, name: 'vol-00000009', thinId: 9 };
    await backend.createVolume(vol);
    await assert.rejects(backend.destroyPool(), /still holds 1 thin device/);
    await backend.remove(vol);
    await backend.destroyPool();
    const inv = dmHostInventory(stateDir);
    assert.deepEqual(inv, { devices: [], loops: [], mounts: [] });
    assert.ok(!existsSync(join(stateDir, 'dm')));
  });
});

function backendOptions(
  stateDir: string,
  store: StateStore,
): ConstructorParameters<typeof DevmapperBackend>[0] {
  return {
    stateDir,
    poolName: null,
    blockSectors: 256,
    lowWaterSectors: 65536,
    skipBlockZeroing: false,
    minFreeData: { percent: 0 },
    minFreeMetadata: { percent: 0 },
    store,
    owner: currentOwner(),
    logger: silentLogger,
  };
}

describe('a pool that is not ours', { skip: needsRoot }, () => {
  test('attaching by name refuses a pool that already holds thin devices', async () => {
    const stateDir = freshStateDir('thinrelay-dmforeign-');
    const pool = `thinrelay-test-foreign-${process.pid}`;
    const files = [join(stateDir, 'm.img'), join(stateDir, 'd.img')];
    try {
      execFileSync('truncate', ['-s', '8M', files[0]!]);
      execFileSync('truncate', ['-s', '64M', files[1]!]);
      const [m, d] = files.map((f) =>
        execFileSync('losetup', ['--find', '--show', f], { encoding: 'utf8' }).trim(),
      );
      execFileSync('dmsetup', [
        'create',
        pool,
        '--table',
        `0 131072 thin-pool ${m} ${d} 256 256 1 error_if_no_space`,
      ]);
      execFileSync('dmsetup', ['message', pool, '0', 'create_thin 42']);
      const store = StateStore.open(stateDir);
      try {
        const backend = new DevmapperBackend({
          ...backendOptions(stateDir, store),
          poolName: pool,
        });
        await assert.rejects(
          backend.prepare(),
          /already holds 1 thin device\(s\) thinrelay did not create/,
        );
        assert.deepEqual(poolThinIds(pool), [42], 'nothing of it was touched');
        await assert.rejects(backend.destroyPool(), /not created by thinrelay/);
      } finally {
        store.close();
      }
    } finally {
      execFileSync('dmsetup', ['remove', '-f', pool]);
      for (const f of files) {
        const loops = execFileSync('losetup', ['-j', f, '-O', 'NAME', '-n'], { encoding: 'utf8' });
        for (const l of loops.split('\n').filter((x) => x.trim() !== ''))
          execFileSync('losetup', ['-d', l.trim()]);
      }
      releaseDmStateDir(stateDir);
    }
  });

  test('the pool name is per state dir: two agents on one host never share device names', () => {
    const a = freshStateDir('thinrelay-dma-');
    const b = freshStateDir('thinrelay-dmb-');
    try {
      assert.notEqual(poolNameOf(a), poolNameOf(b));
    } finally {
      releaseDmStateDir(a);
      releaseDmStateDir(b);
    }
  });
});
