/**
 * The storage layer's own invariants (names, namespaces, pool holds, object
 * kinds and states) are bugs when broken: each throws InternalError (code
 * INTERNAL, exit 70), never an error that reads as a bad image or a host
 * fault. Runs anywhere: every check fails before any tool or device is used.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { ExitCode, InternalError } from '../../host-agent/src/errors.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { DevmapperBackend } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { PoolTransactions } from '../../host-agent/src/storage/devmapper/pool-transactions.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { objectName } from '../../host-agent/src/storage/names.js';
import { ObjectManager } from '../../host-agent/src/storage/object-manager.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';

const bug =
  (message: RegExp) =>
  (err: unknown): boolean =>
    err instanceof InternalError &&
    err.code === 'INTERNAL' &&
    err.exitCode === ExitCode.internal &&
    message.test(err.message);

function tempState(t: TestContext): { stateDir: string; store: StateStore } {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-invariants-'));
  const stateDir = join(dir, 'state');
  const store = StateStore.open(stateDir);
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { stateDir, store };
}

function devmapper(stateDir: string, store: StateStore | null): DevmapperBackend {
  return new DevmapperBackend({
    stateDir,
    poolName: null,
    blockSectors: 256,
    lowWaterSectors: 65536,
    skipBlockZeroing: false,
    minFreeData: { percent: 10 },
    minFreeMetadata: { percent: 10 },
    store,
    owner: currentOwner(),
    logger: silentLogger,
  });
}

test('object names come from our ids only: any other id is a bug', () => {
  assert.equal(objectName('volume', 7), 'vol-00000007');
  for (const id of [0, -1, 1.5, Number.NaN])
    assert.throws(() => objectName('snapshot', id), bug(/invalid object id/));
});

test('a stray outside our pool or namespace is never removed: a bug, said as one', async (t) => {
  const { stateDir, store } = tempState(t);
  const loop = new LoopBackend({ stateDir, reserveBytes: 0 });
  await assert.rejects(
    async () => loop.removeStray('/etc/passwd'),
    bug(/\/etc\/passwd is not in the pool/),
  );
  await assert.rejects(
    devmapper(stateDir, store).removeStray('vg0-root'),
    bug(/vg0-root is not in our namespace/),
  );
  assert.throws(() => devmapper(stateDir, null).pool.tx, bug(/opened without a store/));
});

test('pool holds: a pool never adopted, or held twice by one owner, is a bug', async (t) => {
  const { store } = tempState(t);
  const owner = currentOwner();
  const tx = new PoolTransactions(store, 'p', owner, silentLogger);
  await assert.rejects(
    tx.hold(() => Promise.resolve()),
    bug(/pool p was never adopted/),
  );
  store.poolJournal.adopt('p', 0);
  assert.equal(store.poolJournal.claim('p', null, owner), true);
  await assert.rejects(
    tx.hold(() => Promise.resolve()),
    bug(/pool p is already held by us/),
  );
});

test('object kinds and states the manager relies on: a volume is no snapshot, an unsealed volume is never cloned', async (t) => {
  const { stateDir, store } = tempState(t);
  const objects = new ObjectManager(
    store,
    new LoopBackend({ stateDir, reserveBytes: 0 }),
    currentOwner(),
    silentLogger,
  );
  const volume = store.objects.createIntent(
    { kind: 'volume', backend: 'loop', sizeBytes: 1024 },
    currentOwner(),
  );
  assert.throws(() => objects.snapshotSpec(volume), bug(/is not a snapshot/));
  assert.throws(() => objects.cloneSpec(volume), bug(/is not a cloned volume/));
  await assert.rejects(
    objects.cloneVolumeForApply({ parent: volume, jobId: 1 }, () => undefined),
    bug(/is creating, not sealed: it cannot be cloned/),
  );
});
