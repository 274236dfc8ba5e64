/**
 * `thinrelay snapshotter` on a real dm-thin pool, through a gRPC client as
 * containerd talks to it: Prepare is a thin snapshot (create_snap) of the
 * parent's sealed thin device, or a fresh thin volume with ext4; Mounts is
 * ext4 on /dev/mapper/...; Commit seals it into a layer named by chain ID;
 * View is read-only; Usage comes from the pool; Remove deletes the thin
 * device. kill -9 of the service at each step converges on restart (the
 * snapshot or NotFound, never half of one), the pool's thin ids equal the
 * store's afterwards, and 100 concurrent Prepares all succeed. A Prepare
 * runs no dmsetup process (a logging wrapper first on PATH sees none: the
 * changes are dm ioctls); concurrent ones share commit markers (group
 * commit), and kill -9 inside such a group rolls back every member.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import {
  dmGroupFailpointName,
  snapshotterFailpointNames,
} from '../../host-agent/src/failpoints.js';
import { dmPrefixFor } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { objectName } from '../../host-agent/src/storage/names.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli } from '../helpers/cli.js';
import { needsRoot } from '../helpers/root.js';
import { type WireMount as MountJson } from '../helpers/snapshots-client.js';
import {
  codeOf,
  startSnapshotter,
  type RunningSnapshotter,
} from '../helpers/snapshotter-service.js';
import {
  devmapperEnv,
  dmDevices,
  freshStateDir,
  poolNameOf,
  poolThinIds,
  poolTransactionId,
  releaseDmStateDir,
} from './dm-host.js';

const chain = (n: number): string => `sha256:${n.toString(16).padStart(64, '0')}`;

/** The store's live objects: thin ids, and the dm device names of the writable ones. */
function storeSide(stateDir: string): { thinIds: number[]; writableDevices: string[] } {
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    const live = store.objects.listLive();
    const prefix = dmPrefixFor(stateDir);
    return {
      thinIds: live
        .map((o) => o.thin_id)
        .filter((t): t is number => t !== null)
        .sort((a, b) => a - b),
      writableDevices: live
        .filter((o) => o.state === 'writable')
        .map((o) => prefix + objectName(o.kind, o.id))
        .sort(),
    };
  } finally {
    store.close();
  }
}

/** Pool and store agree: the same thin ids, no device but a writable volume's, nothing open. */
function assertConverged(stateDir: string, what: string): void {
  const pool = poolNameOf(stateDir);
  const side = storeSide(stateDir);
  assert.deepEqual(poolThinIds(pool), side.thinIds, `${what}: pool thin ids = the store's`);
  const devices = dmDevices(dmPrefixFor(stateDir)).filter((d) => d !== pool);
  for (const d of devices)
    assert.ok(side.writableDevices.includes(d), `${what}: ${d} is a writable snapshot's device`);
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    assert.equal(store.poolJournal.get(pool)?.open_op ?? null, null, `${what}: no open change`);
    assert.deepEqual(
      store.containerdSnapshots.listIntents().map((r) => `${r.key} ${r.state}`),
      [],
      `${what}: no intent left`,
    );
  } finally {
    store.close();
  }
}

const sh = (file: string, args: string[]): string => execFileSync(file, args, { encoding: 'utf8' });

/** Mount a snapshot's mounts (one ext4), run `fn` on the root, unmount. */
function withMount<T>(mounts: MountJson[], fn: (root: string) => T): T {
  assert.equal(mounts.length, 1);
  const m = mounts[0]!;
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-snap-mnt-'));
  try {
    sh('mount', ['-t', m.type, '-o', m.options.join(','), m.source, dir]);
    try {
      return fn(dir);
    } finally {
      sh('umount', [dir]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const mountsOf = (r: Record<string, unknown>): MountJson[] => r.mounts as MountJson[];

describe('thinrelay snapshotter on devmapper', { skip: needsRoot }, () => {
  let stateDir: string;
  let socket: string;
  let env: NodeJS.ProcessEnv;
  let svc: RunningSnapshotter | undefined;
  const start = async (
    crashAt?: string,
    more: NodeJS.ProcessEnv = {},
  ): Promise<RunningSnapshotter> => {
    svc = await startSnapshotter(socket, {
      ...env,
      ...more,
      ...(crashAt === undefined ? {} : { THINRELAY_CRASH_AT: crashAt }),
    });
    return svc;
  };

  before(async () => {
    stateDir = freshStateDir('thinrelay-dm-snap-');
    socket = join(stateDir, 'snapshotter.sock');
    env = { ...devmapperEnv(stateDir), THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '64M' };
    const created = await runCli(['pool', 'create', '--size', '2G'], env);
    assert.equal(created.code, 0, created.stderr);
  });
  after(async () => {
    await svc?.stop();
    releaseDmStateDir(stateDir);
  });

  test('Prepare, Mounts, Commit, View, Usage, Remove on thin devices', async () => {
    const { client } = await start();
    const base = await client.call('Prepare', { key: 'ns/1/base', parent: '' });
    const [m] = mountsOf(base);
    assert.equal(m!.type, 'ext4');
    assert.match(m!.source, /^\/dev\/mapper\/thinrelay-[0-9a-f]{8}-vol-\d{8}$/);
    assert.deepEqual(m!.options, ['rw']);
    withMount(mountsOf(base), (root) => writeFileSync(join(root, 'layer1'), 'one\n'));
    assert.deepEqual(mountsOf(await client.call('Mounts', { key: 'ns/1/base' })), mountsOf(base));

    const layer = `ns/2/${chain(1)}`;
    await client.call('Commit', { name: layer, key: 'ns/1/base' });
    assert.equal(await codeOf(client.call('Stat', { key: 'ns/1/base' })), grpc.status.NOT_FOUND);
    const info = (await client.call('Stat', { key: layer })).info as { kind: string };
    assert.equal(info.kind, 'COMMITTED');
    assert.ok(
      !dmDevices(dmPrefixFor(stateDir)).includes(m!.source.slice('/dev/mapper/'.length)),
      'a committed layer is a sealed (detached) thin device',
    );
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      const blob = store.blobs.readyByChain(chain(1));
      assert.ok(blob !== undefined, 'the layer is recorded under its chain ID');
      const volume = store.objects.get(blob.volume_id!)!;
      assert.equal(volume.state, 'sealed');
      assert.ok(volume.thin_id !== null);
    } finally {
      store.close();
    }
    const layerUsage = await client.call('Usage', { key: layer });
    assert.ok(
      Number(layerUsage.size) > 0,
      `a layer with a file maps blocks: ${String(layerUsage.size)}`,
    );

    const child = await client.call('Prepare', { key: 'ns/1/child', parent: layer });
    assert.deepEqual(mountsOf(child)[0]!.options, ['rw']);
    assert.notEqual(mountsOf(child)[0]!.source, m!.source);
    withMount(mountsOf(child), (root) => {
      assert.equal(readFileSync(join(root, 'layer1'), 'utf8'), 'one\n');
      writeFileSync(join(root, 'layer2'), 'two\n');
    });
    const view = await client.call('View', { key: 'ns/1/view', parent: layer });
    assert.deepEqual(mountsOf(view)[0]!.options, ['ro']);
    withMount(mountsOf(view), (root) => {
      assert.equal(readFileSync(join(root, 'layer1'), 'utf8'), 'one\n');
      assert.throws(() => writeFileSync(join(root, 'x'), 'x'), /EROFS/);
    });
    assert.equal(
      await codeOf(client.call('Commit', { name: 'ns/2/v', key: 'ns/1/view' })),
      grpc.status.FAILED_PRECONDITION,
    );
    assert.equal(
      await codeOf(client.call('Prepare', { key: 'ns/1/child', parent: layer })),
      grpc.status.ALREADY_EXISTS,
    );
    assert.equal(
      await codeOf(client.call('Remove', { key: layer })),
      grpc.status.FAILED_PRECONDITION,
      'a layer with snapshots on it stays',
    );
    assertConverged(stateDir, 'after Prepare/Commit/View');
    assert.equal(storeSide(stateDir).writableDevices.length, 2, 'child and view are attached');

    for (const key of ['ns/1/child', 'ns/1/view', layer]) await client.call('Remove', { key });
    assertConverged(stateDir, 'after Remove');
    assert.deepEqual(storeSide(stateDir).thinIds, [], 'every thin device deleted');
    assert.deepEqual(poolThinIds(poolNameOf(stateDir)), []);
    await svc!.stop();
  });

  /**
   * Each kill -9 point: the operations that lead there (`run`), and what
   * containerd must see afterwards. `parent` is a layer committed first.
   */
  const parentLayer = `ns/9/${chain(9)}`;
  type Op = 'prepare' | 'fresh' | 'commit' | 'remove';
  const points: { point: string; op: Op; after: 'gone' | 'there' | 'either' | 'committed' }[] = [
    { point: 'writable:intent', op: 'prepare', after: 'gone' },
    { point: 'dm:create_snap:sent', op: 'prepare', after: 'gone' },
    { point: 'dm:create_snap:committed', op: 'prepare', after: 'gone' },
    { point: 'writable:created', op: 'prepare', after: 'either' },
    { point: snapshotterFailpointNames[0], op: 'prepare', after: 'there' },
    { point: 'dm:create_thin:sent', op: 'fresh', after: 'gone' },
    { point: snapshotterFailpointNames[1], op: 'commit', after: 'committed' },
    { point: 'seal:detached', op: 'commit', after: 'committed' },
    { point: snapshotterFailpointNames[2], op: 'remove', after: 'gone' },
    { point: 'dm:delete:sent', op: 'remove', after: 'gone' },
    { point: 'dm:delete:committed', op: 'remove', after: 'gone' },
  ];

  test('kill -9 at each step converges on restart', async (t) => {
    {
      const { client } = await start();
      const base = await client.call('Prepare', { key: 'ns/9/base', parent: '' });
      withMount(mountsOf(base), (root) => writeFileSync(join(root, 'parent'), 'parent\n'));
      await client.call('Commit', { name: parentLayer, key: 'ns/9/base' });
      await svc!.stop();
    }
    let n = 0;
    for (const { point, op, after: expected } of points) {
      await t.test(`crash at ${point}`, async () => {
        const key = `ns/9/k${++n}`;
        const name = `ns/9/${chain(100 + n)}`;
        const armed = await start(point);
        const { client } = armed;
        const crashed = (async () => {
          if (op === 'fresh') await client.call('Prepare', { key, parent: '' });
          else await client.call('Prepare', { key, parent: parentLayer });
          if (op === 'commit') await client.call('Commit', { name, key });
          if (op === 'remove') await client.call('Remove', { key });
        })();
        await assert.rejects(crashed, (err: grpc.ServiceError) => {
          assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
          return true;
        });
        assert.deepEqual(await armed.exited, { code: null, signal: 'SIGKILL' }, 'it died there');
        armed.client.close();

        const { client: again } = await start();
        const stat = async (k: string): Promise<string> => {
          try {
            return ((await again.call('Stat', { key: k })).info as { kind: string }).kind;
          } catch (err) {
            assert.equal((err as grpc.ServiceError).code, grpc.status.NOT_FOUND);
            return 'NotFound';
          }
        };
        const seen = await stat(key);
        if (expected === 'gone') assert.equal(seen, 'NotFound');
        if (expected === 'there') assert.equal(seen, 'ACTIVE');
        if (expected === 'committed') {
          assert.equal(seen, 'NotFound');
          assert.equal(await stat(name), 'COMMITTED');
        }
        if (seen === 'ACTIVE') {
          // A whole snapshot: its device comes up and holds the parent's file system.
          const mounts = mountsOf(await again.call('Mounts', { key }));
          withMount(mounts, (root) =>
            assert.equal(readFileSync(join(root, 'parent'), 'utf8'), 'parent\n'),
          );
        }
        assertConverged(stateDir, `after a crash at ${point}`);
        if (seen !== 'NotFound') await again.call('Remove', { key });
        if (expected === 'committed') await again.call('Remove', { key: name });
        assertConverged(stateDir, `after removing what the crash at ${point} left`);
        await svc!.stop();
      });
    }
  });

  test('kill -9 inside a grouped pool transaction: recovery rolls back every member', async () => {
    const armed = await start(dmGroupFailpointName);
    const keys = Array.from({ length: 6 }, (_, i) => `ns/8/g${i}`);
    const settled = await Promise.allSettled(
      keys.map((key) => armed.client.call('Prepare', { key, parent: parentLayer })),
    );
    assert.deepEqual(await armed.exited, { code: null, signal: 'SIGKILL' }, 'it died in a group');
    armed.client.close();
    const again = await start();
    const rolledBack = again
      .log()
      .split('\n')
      .filter((l) => l.includes('finished an interrupted change') && l.includes('rolled back'));
    assert.ok(rolledBack.length >= 2, `the journal knew every member of the group: ${again.log()}`);
    const kinds: string[] = [];
    for (const [i, key] of keys.entries()) {
      let kind: string;
      try {
        kind = ((await again.client.call('Stat', { key })).info as { kind: string }).kind;
      } catch (err) {
        assert.equal((err as grpc.ServiceError).code, grpc.status.NOT_FOUND);
        kind = 'NotFound';
      }
      // A Prepare answered before the crash stands; one that was cut off is gone.
      assert.equal(kind, settled[i]!.status === 'fulfilled' ? 'ACTIVE' : 'NotFound', key);
      kinds.push(kind);
    }
    assert.ok(kinds.filter((k) => k === 'NotFound').length >= rolledBack.length);
    assertConverged(stateDir, 'after a crash inside a group');
    for (const [i, key] of keys.entries())
      if (kinds[i] === 'ACTIVE') await again.client.call('Remove', { key });
    assertConverged(stateDir, 'after removing what the group crash left');
    await svc!.stop();
  });

  test('no dmsetup process for a Prepare + Mounts; 100 concurrent Prepares are grouped and all succeed', async () => {
    // A wrapper first on PATH logs each dmsetup process the service runs, then runs the real one.
    const bin = join(stateDir, 'bin');
    mkdirSync(bin, { recursive: true });
    const log = join(stateDir, 'dmsetup.log');
    const real = sh('sh', ['-c', 'command -v dmsetup']).trim();
    writeFileSync(
      join(bin, 'dmsetup'),
      `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nexec '${real}' "$@"\n`,
      { mode: 0o755 },
    );
    const calls = (): string[] =>
      existsSync(log)
        ? readFileSync(log, 'utf8')
            .split('\n')
            .filter((l) => l !== '')
        : [];
    const { client } = await start(undefined, { PATH: `${bin}:${process.env.PATH ?? ''}` });
    const pool = poolNameOf(stateDir);

    // The wrapper works: anything the service ran through PATH would be here.
    sh('dmsetup', ['version']);
    writeFileSync(log, '');
    const single0 = poolTransactionId(pool);
    const prepared = await client.call('Prepare', { key: 'ns/7/single', parent: parentLayer });
    const mounted = await client.call('Mounts', { key: 'ns/7/single' });
    assert.deepEqual(calls(), [], 'a single Prepare + Mounts runs no dmsetup');
    assert.equal(poolTransactionId(pool), single0 + 1, 'one pool transaction');
    const device = mountsOf(mounted)[0]!.source;
    assert.equal(mountsOf(prepared)[0]!.source, device);
    assert.ok(existsSync(device), `${device} is there`);
    assert.match(sh('dmsetup', ['table', device.slice('/dev/mapper/'.length)]), / thin /);
    await client.call('Remove', { key: 'ns/7/single' });
    assert.equal(existsSync(device), false, 'its node went with it');

    const t0 = poolTransactionId(pool);
    writeFileSync(log, '');
    const keys = Array.from({ length: 100 }, (_, i) => `ns/7/c${i}`);
    const results = await Promise.allSettled(
      keys.map((key) => client.call('Prepare', { key, parent: parentLayer })),
    );
    const failed = results.filter((r) => r.status === 'rejected');
    assert.deepEqual(
      failed.map((r) => String(r.reason)),
      [],
      'every Prepare succeeded',
    );
    const sources = new Set(
      results.map(
        (r) => mountsOf((r as PromiseFulfilledResult<Record<string, unknown>>).value)[0]!.source,
      ),
    );
    assert.equal(sources.size, 100, 'a device each');
    const commits = poolTransactionId(pool) - t0;
    assert.ok(commits >= 1 && commits < 100, `grouped: ${commits} pool transactions for 100`);
    assert.deepEqual(calls(), [], 'no dmsetup process for 100 Prepares either');
    assertConverged(stateDir, 'after 100 Prepares');
    assert.equal(storeSide(stateDir).writableDevices.length, 100);
    await Promise.all(keys.map((key) => client.call('Remove', { key })));
    await client.call('Remove', { key: parentLayer });
    assertConverged(stateDir, 'after removing them');
    assert.deepEqual(poolThinIds(poolNameOf(stateDir)), []);
    await svc!.stop();
  });
});
