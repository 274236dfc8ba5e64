/**
 * `thinrelay snapshotter` on the loop backend (state dir on xfs: the
 * in-process FICLONE clone), under bursts of concurrent Prepares whose
 * intents and outcomes share commits (store/group-commit.ts). A burst with
 * a duplicate key gives that key one AlreadyExists and prepares the rest, in
 * fewer commits than transactions. kill -9 of the service in the middle of
 * a burst (THINRELAY_CRASH_AT: after the shared intent commit, after a
 * clone, after a shared outcome commit) converges on restart: each key is a
 * snapshot or NotFound (every one acknowledged before the kill is there),
 * no intent is left, the pool holds exactly the store's live volumes, and
 * no loop device or mount is left.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { objectName } from '../../host-agent/src/storage/names.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { hostInventory } from '../helpers/host-leaks.js';
import { needsRootAndTools } from '../helpers/root.js';
import { smallFilesystem, type SmallFilesystem } from '../helpers/small-fs.js';
import type { WireMount } from '../helpers/snapshots-client.js';
import { startSnapshotter, type RunningSnapshotter } from '../helpers/snapshotter-service.js';

const parent = `ns/1/sha256:${'ab'.repeat(32)}`;
const burstSize = 8;

/** The store settled: no intent left, the pool's files are the live volumes', nothing attached. */
function assertSettled(stateDir: string): void {
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    assert.deepEqual(
      store.containerdSnapshots.listIntents().map((r) => `${r.key}:${r.state}`),
      [],
    );
    const live = store.objects.listLive();
    assert.deepEqual(
      live.filter((o) => o.state !== 'writable' && o.state !== 'sealed').map((o) => o.state),
      [],
      'every live volume at rest',
    );
    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.poolFiles, live.map((o) => `${objectName(o.kind, o.id)}.img`).sort());
    assert.deepEqual(inv.loops, []);
    assert.deepEqual(inv.mounts, []);
  } finally {
    store.close();
  }
}

describe(
  'thinrelay snapshotter on loop: bursts of Prepares',
  { skip: needsRootAndTools(['mkfs.xfs']) },
  () => {
    let fs: SmallFilesystem | undefined;
    let svc: RunningSnapshotter | undefined;
    let socket = '';
    let stateDir = '';
    let parentBytes = 0;
    const start = async (crashAt?: string): Promise<RunningSnapshotter> =>
      startSnapshotter(
        socket,
        {
          THINRELAY_RESERVE_BYTES: '0',
          THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '64M',
          ...(crashAt === undefined ? {} : { THINRELAY_CRASH_AT: crashAt }),
        },
        ['--state-dir', stateDir, '--backend', 'loop'],
      );

    before(async () => {
      fs = smallFilesystem(512, 'xfs');
      stateDir = fs.stateDir;
      socket = join(fs.mnt, 'snapshotter.sock');
      svc = await start();
      // The parent: a layer with a file, committed through the API as containerd's unpacker does.
      const base = (await svc.client.call('Prepare', { key: 'ns/base', parent: '' }))
        .mounts as WireMount[];
      const layer = join(fs.mnt, 'layer');
      mkdirSync(layer);
      execFileSync('mount', ['-o', 'loop', base[0]!.source, layer]);
      try {
        writeFileSync(join(layer, 'message'), 'from the parent layer\n');
      } finally {
        execFileSync('umount', [layer]);
      }
      await svc.client.call('Commit', { name: parent, key: 'ns/base' });
      parentBytes = statSync(base[0]!.source).size;
      await svc.stop();
      svc = undefined;
    });

    after(async () => {
      await svc?.stop();
      fs?.release();
    });

    test('a burst with a duplicate key: one AlreadyExists, the rest prepared, commits shared', async () => {
      svc = await start();
      const keys = Array.from({ length: burstSize }, (_, i) => `ns/burst-${i}`);
      const results = await Promise.allSettled(
        [...keys, keys[0]!].map((key) => svc!.client.call('Prepare', { key, parent })),
      );
      const refused = results.filter((r) => r.status === 'rejected');
      assert.equal(refused.length, 1, 'only the second Prepare of the duplicate key is refused');
      assert.equal(
        ((refused[0] as PromiseRejectedResult).reason as grpc.ServiceError).code,
        grpc.status.ALREADY_EXISTS,
      );
      for (const key of keys) {
        const [mount] = (await svc.client.call('Mounts', { key })).mounts as WireMount[];
        assert.equal(statSync(mount!.source).size, parentBytes);
      }
      for (const key of keys) await svc.client.call('Remove', { key });
      await svc.stop();
      const log = svc.log();
      svc = undefined;
      const counts = /"sharedTransactions":(\d+),"sharedCommits":(\d+)/.exec(log);
      assert.ok(counts !== null, `no shared-commit counts in the log:\n${log}`);
      const [transactions, commits] = [Number(counts[1]), Number(counts[2])];
      // An intent and an outcome per Prepare (the refused one: its intent only).
      assert.equal(transactions, 2 * burstSize + 1);
      assert.ok(commits < transactions, `${commits} commits for ${transactions} transactions`);
      assertSettled(stateDir);
    });

    for (const point of ['writable:intent', 'writable:created', 'snapshotter:prepare:ready']) {
      test(`kill -9 mid-burst at ${point} converges on restart`, async () => {
        svc = await start(point);
        const keys = Array.from({ length: burstSize }, (_, i) => `ns/${point}-${i}`);
        const results = await Promise.allSettled(
          keys.map((key) => svc!.client.call('Prepare', { key, parent })),
        );
        const ended = await svc.exited;
        svc.client.close();
        svc = undefined;
        assert.equal(ended.signal, 'SIGKILL', `the service was killed at ${point}`);
        const acked = keys.filter((_, i) => results[i]!.status === 'fulfilled');
        assert.ok(acked.length < burstSize, 'the kill came before the whole burst was answered');

        svc = await start();
        const present: string[] = [];
        for (const key of keys) {
          const code: grpc.status = await svc.client.call('Stat', { key }).then(
            () => grpc.status.OK,
            (err: grpc.ServiceError) => err.code,
          );
          if (code === grpc.status.OK) present.push(key);
          else assert.equal(code, grpc.status.NOT_FOUND, `${key}: a snapshot or NotFound`);
        }
        for (const key of acked) assert.ok(present.includes(key), `${key} was acknowledged`);
        for (const key of present) {
          const [mount] = (await svc.client.call('Mounts', { key })).mounts as WireMount[];
          assert.ok(existsSync(mount!.source), `${key}: its volume file exists`);
          assert.equal(statSync(mount!.source).size, parentBytes);
        }
        assertSettled(stateDir);
        for (const key of present) await svc.client.call('Remove', { key });
        await svc.stop();
        svc = undefined;
        assertSettled(stateDir);
        // Only the parent's volume is left.
        assert.equal(hostInventory(stateDir).poolFiles.length, 1);
      });
    }
  },
);
