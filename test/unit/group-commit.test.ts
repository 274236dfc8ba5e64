/**
 * The store's shared commits (store/group-commit.ts): transactions asked for
 * in one turn of the event loop share one commit, each caller learns its
 * outcome only once that commit is on disk (seen by a second connection),
 * a typed error rolls back its own writes alone, and a database fault fails
 * the whole batch with nothing written.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../../host-agent/src/errors.js';
import { StateStore } from '../../host-agent/src/store/index.js';

function tempStores(t: { after(fn: () => void): void }): { store: StateStore; other: StateStore } {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-group-commit-'));
  const store = StateStore.open(dir);
  // A second connection, as another process would read the file.
  const other = StateStore.open(dir);
  t.after(() => {
    store.close();
    other.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { store, other };
}

const labels = {};
const snapshot = (store: StateStore, key: string): number =>
  store.containerdSnapshots.create(
    { key, kind: 'active', parent: null, objectId: null, blobId: null, labels, state: 'ready' },
    null,
  ).id;

test('calls of one turn share one commit; each resolves once its row is committed', async (t) => {
  const { store, other } = tempStores(t);
  const before = { ...store.groupCommit.counts };
  const seenAtResolve: boolean[] = [];
  const calls = Array.from({ length: 20 }, (_, i) =>
    store
      .txShared(() => snapshot(store, `k${i}`))
      .then((id) => {
        // Committed: visible to another connection, no transaction left open.
        assert.equal(store.db.inTransaction, false);
        seenAtResolve.push(other.containerdSnapshots.get(id)?.key === `k${i}`);
        return id;
      }),
  );
  // Nothing is written before the turn ends: the caller never acts on an uncommitted record.
  assert.equal(other.containerdSnapshots.byKey('k0'), undefined);
  const ids = await Promise.all(calls);
  assert.equal(new Set(ids).size, 20);
  assert.deepEqual(seenAtResolve, Array<boolean>(20).fill(true));
  assert.equal(store.groupCommit.counts.requests - before.requests, 20);
  assert.equal(store.groupCommit.counts.commits - before.commits, 1, 'one commit for all 20');
});

test('calls made while a batch is pending go into the next commit', async (t) => {
  const { store } = tempStores(t);
  const before = store.groupCommit.counts.commits;
  const first = store.txShared(() => snapshot(store, 'a'));
  await first;
  const second = await Promise.all([
    store.txShared(() => snapshot(store, 'b')),
    store.txShared(() => snapshot(store, 'c')),
  ]);
  assert.equal(second.length, 2);
  assert.equal(store.groupCommit.counts.commits - before, 2);
});

test('a typed error rolls back its own writes only, and reaches its caller alone', async (t) => {
  const { store, other } = tempStores(t);
  const results = await Promise.allSettled([
    store.txShared(() => snapshot(store, 'one')),
    store.txShared(() => {
      // Written, then refused: this write must not survive.
      snapshot(store, 'half');
      throw new UsageError('ALREADY_EXISTS', 'snapshot dup already exists');
    }),
    store.txShared(() => {
      // The same key twice in one batch: the second sees the first's row.
      if (store.containerdSnapshots.byKey('one') !== undefined)
        throw new UsageError('ALREADY_EXISTS', 'snapshot one already exists');
      return snapshot(store, 'one');
    }),
    store.txShared(() => snapshot(store, 'three')),
  ]);
  assert.deepEqual(
    results.map((r) => r.status),
    ['fulfilled', 'rejected', 'rejected', 'fulfilled'],
  );
  assert.match(String((results[2] as PromiseRejectedResult).reason), /one already exists/);
  assert.deepEqual(
    other.containerdSnapshots
      .listLive()
      .map((r) => r.key)
      .sort(),
    ['one', 'three'],
  );
});

test('a database fault fails the whole batch and writes nothing', async (t) => {
  const { store, other } = tempStores(t);
  const results = await Promise.allSettled([
    store.txShared(() => snapshot(store, 'x')),
    store.txShared(() => store.db.prepare('INSERT INTO no_such_table VALUES (1)').run()),
    store.txShared(() => snapshot(store, 'y')),
  ]);
  assert.deepEqual(
    results.map((r) => r.status),
    ['rejected', 'rejected', 'rejected'],
  );
  assert.match(String((results[0] as PromiseRejectedResult).reason), /no such table/);
  assert.deepEqual(other.containerdSnapshots.listLive(), []);
  // The store is usable afterwards.
  await store.txShared(() => snapshot(store, 'z'));
  assert.equal(other.containerdSnapshots.byKey('z')?.key, 'z');
});
