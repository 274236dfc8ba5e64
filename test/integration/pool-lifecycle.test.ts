/**
 * Pool lifecycle (issue 18) on one host, through the CLI as an operator runs
 * it: the loop backend with its state dir on a small loop-mounted ext4, real
 * mounts, s3rver. Retention keeps the newest versions of a key; admission
 * evicts by the watermarks (older versions first, least recently used
 * first) instead of failing; what is in use (mounted) or pinned stays; only
 * pins and devices in use can make it refuse, and then LOW_SPACE says who
 * holds the space; kill -9 inside an eviction converges; an eviction racing
 * an activation never leaves a device on a removed volume.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { loadConfig } from '../../host-agent/src/config.js';
import { planSync } from '../../host-agent/src/fleet/member/catch-up-sync.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { roomWithoutEvicting } from '../../host-agent/src/pool/keeper.js';
import { openRuntime } from '../../host-agent/src/runtime.js';
import { runCli, okJson, type CliResult } from '../helpers/cli.js';
import { poolUsage } from '../helpers/pool-usage.js';
import { deploymentItem } from '../helpers/fleet-deployment.js';
import { assertHostMatchesStore, hostInventory } from '../helpers/host-leaks.js';
import { queryState, smallFilesystem } from '../helpers/small-fs.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { packTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-lifecycle';
const MiB = 1024 * 1024;

interface ImageJson {
  id: number;
  key: string;
  etag: string;
  status: string;
  pinned: boolean;
  removedReason: string | null;
  removedDetail: string | null;
}

interface PoolJson {
  usage: { capacityBytes: number; usedBytes: number; dataPercent: number };
  holders: { pinnedBytes: number; inUseBytes: number; evictableBytes: number };
  degraded: string | null;
}

/** A rootfs tar with `payloadMiB` of incompressible content, different for every call. */
async function versionTar(name: string, payloadMiB: number): Promise<Buffer> {
  return packTar([
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/version', content: `${name}\n` },
    { name: 'payload.bin', content: randomBytes(payloadMiB * MiB) },
  ]);
}

describe(
  'pool lifecycle (issue 18)',
  {
    skip: needsRootAndTools(['mkfs.ext4', 'losetup', 'mount']),
    timeout: 900_000,
  },
  () => {
    let s3: S3Emulator;
    before(async () => {
      s3 = await startS3Emulator();
      await s3.createBucket(bucket);
    });
    after(async () => {
      await s3?.stop();
    });

    interface Host {
      stateDir: string;
      mnt: string;
      env: NodeJS.ProcessEnv;
      cli(args: readonly string[], extra?: NodeJS.ProcessEnv): Promise<CliResult>;
      put(key: string, body: Buffer): Promise<string>;
      process(key: string, eTag: string, extra?: NodeJS.ProcessEnv): Promise<CliResult>;
      images(all?: boolean): Promise<ImageJson[]>;
      pool(): Promise<PoolJson>;
      /** Runs first when the host is released (a test's own mounts on its devices). */
      onRelease(fn: () => void): void;
    }

    /**
     * A host whose state dir is on its own small ext4 (so "full" is real);
     * everything it made is released in t.after, also when an assertion fails.
     */
    function newHost(t: TestContext, fsMiB: number, env: NodeJS.ProcessEnv = {}): Host {
      const fs = smallFilesystem(fsMiB);
      const { stateDir, mnt } = fs;
      const first: (() => void)[] = [];
      t.after(() => {
        for (const fn of first) fn();
        fs.release();
      });
      const hostEnv: NodeJS.ProcessEnv = {
        ...s3EnvFor(s3),
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BACKEND: 'loop',
        THINRELAY_BUCKET: bucket,
        THINRELAY_CONFIG_FILE: 'none',
        THINRELAY_VOLUME_SIZE: '48M',
        THINRELAY_RESERVE_BYTES: '8M',
        ...env,
      };
      const cli = (args: readonly string[], extra: NodeJS.ProcessEnv = {}) =>
        runCli(args, { ...hostEnv, ...extra });
      return {
        stateDir,
        mnt,
        env: hostEnv,
        cli,
        // Bare, as `images --json` prints it (docs/operating-a-host.md "JSON output").
        put: async (key, body) => (await s3.putObject(bucket, key, body)).eTag.replace(/"/g, ''),
        process: (key, eTag, extra = {}) =>
          cli(['process-image', '--s3-key', key, '--etag', eTag], extra),
        images: async (all = false) =>
          okJson<ImageJson[]>(await cli(['images', '--json', ...(all ? ['--all'] : [])])),
        pool: async () => okJson<PoolJson>(await cli(['pool', 'status', '--json'])),
        onRelease: (fn) => first.push(fn),
      };
    }

    test('retention keeps the newest versions of a key; space really comes back', async (t) => {
      const host = newHost(t, 400);
      const key = 'images/app.tar';
      const eTags: string[] = [];
      for (let v = 1; v <= 4; v++) {
        const eTag = await host.put(key, await versionTar(`app v${v}`, 4));
        eTags.push(eTag);
        const r = await host.process(key, eTag);
        assert.equal(r.code, 0, r.stderr);
      }
      const live = await host.images();
      assert.deepEqual(
        live.map((i) => [i.key, i.etag, i.status]),
        [
          [key, eTags[2], 'ready'],
          [key, eTags[3], 'ready'],
        ],
        'the newest 2 versions (THINRELAY_RETAIN_VERSIONS default) stay',
      );
      const all = await host.images(true);
      for (const old of all.filter((i) => i.etag === eTags[0] || i.etag === eTags[1])) {
        assert.equal(old.status, 'removed');
        assert.equal(old.removedReason, 'superseded');
        const detail = JSON.parse(old.removedDetail!) as { retainVersions: number };
        assert.equal(detail.retainVersions, 2);
      }
      // Their snapshots and volumes are gone from the pool: files = live objects, devices = active snapshots.
      assertHostMatchesStore(host.stateDir);
      assert.equal(
        hostInventory(host.stateDir).loops.length,
        2,
        'one active snapshot per kept version',
      );

      // The policy off is what the product did before: every version stays.
      const key2 = 'images/off.tar';
      for (let v = 1; v <= 3; v++) {
        const eTag = await host.put(key2, await versionTar(`off v${v}`, 1));
        assert.equal((await host.process(key2, eTag, { THINRELAY_POOL_POLICY: 'off' })).code, 0);
      }
      assert.equal((await host.images()).filter((i) => i.key === key2).length, 3);
    });

    test('admission evicts older versions first, least recently used first, never what is mounted', async (t) => {
      // About 9.5 MiB on disk per image (volume + snapshot copy): 3 keys × 3 versions + 3 more do not fit.
      const host = newHost(t, 130, { THINRELAY_RETAIN_VERSIONS: '3' });
      const keys = ['images/a.tar', 'images/b.tar', 'images/c.tar'];
      // An old version of a 4th key, mounted (in use) for the whole churn, with a file written to it.
      const keep = 'images/mounted.tar';
      const keepETag = await host.put(keep, await versionTar('mounted v1', 4));
      const keepDevice = (await host.process(keep, keepETag)).stdout.trim();
      const keepMnt = join(host.mnt, 'vm-mount');
      mkdirSync(keepMnt);
      execFileSync('mount', [keepDevice, keepMnt]);
      let mounted = true;
      host.onRelease(() => {
        if (mounted) execFileSync('umount', ['-l', keepMnt]);
      });
      writeFileSync(join(keepMnt, 'vm-state'), 'written by the VM\n');
      const keepDigest = createHash('sha256')
        .update(readFileSync(join(keepMnt, 'payload.bin')))
        .digest('hex');

      let maxPercent = 0;
      let failures = 0;
      const high = 85;
      for (let round = 1; round <= 6; round++) {
        for (const key of keys) {
          const eTag = await host.put(key, await versionTar(`${key} v${round}`, 4));
          const r = await host.process(key, eTag);
          if (r.code !== 0) failures++;
          assert.equal(r.code, 0, `${key} v${round}: ${r.stderr}`);
          assert.doesNotMatch(r.stderr, /LOW_SPACE/);
          // Read in this process (helpers/pool-usage.ts; the CLI's figure is checked below).
          const usage = await poolUsage(host.env);
          maxPercent = Math.max(maxPercent, usage.dataPercent);
          // Never above the high watermark by more than one image (~10 MiB of ~190 MiB capacity).
          assert.ok(
            usage.dataPercent <= high + (100 * 12 * MiB) / usage.capacityBytes,
            `round ${round} ${key}: ${usage.dataPercent.toFixed(1)}%`,
          );
        }
        if (round === 2) {
          // Newer versions of the mounted key: its old version is superseded but must stay.
          const v2 = await host.put(keep, await versionTar('mounted v2', 1));
          const rv2 = await host.process(keep, v2);
          assert.equal(rv2.code, 0, rv2.stderr);
          const v3 = await host.put(keep, await versionTar('mounted v3', 1));
          const rv3 = await host.process(keep, v3);
          assert.equal(rv3.code, 0, rv3.stderr);
          const v4 = await host.put(keep, await versionTar('mounted v4', 1));
          const rv4 = await host.process(keep, v4);
          assert.equal(rv4.code, 0, rv4.stderr);
        }
      }
      assert.equal(failures, 0);
      t.diagnostic(`peak data use ${maxPercent.toFixed(1)}% (high watermark ${high}%)`);
      // pool status --json reports the use read in this process (the state database's writes
      // may move a loop pool's figure a little between the two reads).
      const cliUsage = (await host.pool()).usage;
      const mine = await poolUsage(host.env);
      assert.equal(cliUsage.capacityBytes, mine.capacityBytes, 'pool status: the same capacity');
      assert.ok(
        Math.abs(cliUsage.usedBytes - mine.usedBytes) < MiB,
        `pool status: the same use (${cliUsage.usedBytes} and ${mine.usedBytes} bytes)`,
      );
      const all = await host.images(true);
      const evicted = all.filter((i) => i.removedReason === 'evicted');
      assert.ok(evicted.length > 0, 'the pool was small enough to need eviction');
      for (const e of evicted) {
        const d = JSON.parse(e.removedDetail!) as { trigger: string; usage: string };
        assert.equal(d.trigger, 'admission');
        assert.match(d.usage, /^data \d+\.\d% /);
      }
      // Each key ends with its newest version ready (the current version is evicted last).
      const live = await host.images();
      for (const key of keys) {
        const newest = all.filter((i) => i.key === key).at(-1)!;
        assert.ok(
          live.some((i) => i.key === key && i.etag === newest.etag && i.status === 'ready'),
          `${key}: its newest version is ready`,
        );
      }
      // The mounted old version: superseded, its snapshot still attached and mounted, content intact.
      const oldVersion = all.find((i) => i.etag === keepETag)!;
      assert.equal(oldVersion.status, 'removed');
      assert.equal(oldVersion.removedReason, 'superseded');
      assert.equal(readFileSync(join(keepMnt, 'vm-state'), 'utf8'), 'written by the VM\n');
      assert.equal(
        createHash('sha256')
          .update(readFileSync(join(keepMnt, 'payload.bin')))
          .digest('hex'),
        keepDigest,
      );
      assert.ok(hostInventory(host.stateDir).loops.some((l) => l.device === keepDevice));
      // Released by its VM: the next pass collects the snapshot and its volume.
      execFileSync('umount', [keepMnt]);
      mounted = false;
      const pass = okJson<{ collected: number }>(await host.cli(['pool', 'evict', '--json']));
      assert.ok(pass.collected >= 2, `snapshot and volume collected (${pass.collected})`);
      assert.ok(!hostInventory(host.stateDir).loops.some((l) => l.device === keepDevice));
      assertHostMatchesStore(host.stateDir);
    });

    test('pins hold; pins alone over the watermark: LOW_SPACE names them, status is degraded', async (t) => {
      const host = newHost(t, 120);
      const base = 'images/base.tar';
      const baseETag = await host.put(base, await versionTar('base', 4));
      assert.equal((await host.process(base, baseETag)).code, 0);
      okJson(await host.cli(['pin', base, '--json']));
      // Fill with other keys: the pinned base is never evicted.
      for (let i = 1; i <= 14; i++) {
        const key = `images/fill-${i}.tar`;
        const r = await host.process(key, await host.put(key, await versionTar(key, 4)));
        assert.equal(r.code, 0, r.stderr);
      }
      const live = await host.images();
      const baseRow = live.find((i) => i.key === base)!;
      assert.equal(baseRow.status, 'ready');
      assert.equal(baseRow.pinned, true);
      assert.ok(
        (await host.images(true)).some((i) => i.removedReason === 'evicted'),
        'others were evicted instead',
      );

      // Pin everything, then ask for more than the rest of the pool: refused, and it says why.
      for (const i of live) okJson(await host.cli(['pin', String(i.id), '--json']));
      const big = 'images/big.tar';
      const bigETag = await host.put(big, await versionTar('big', 40));
      const r = await host.process(big, bigETag);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /LOW_SPACE/);
      assert.match(r.stderr, /pinned image\(s\)/);
      assert.equal(
        (await host.images()).filter((i) => i.pinned).length,
        live.length,
        'nothing pinned was evicted',
      );
      // Over the high watermark with nothing evictable: degraded, and why.
      const fill = join(host.mnt, 'filler');
      const pool0 = await host.pool();
      const over = Math.ceil(pool0.usage.capacityBytes * 0.9 - pool0.usage.usedBytes);
      if (over > 0) writeFileSync(fill, Buffer.alloc(over, 1));
      const pool = await host.pool();
      assert.ok(pool.usage.dataPercent > 85, `${pool.usage.dataPercent}`);
      assert.match(pool.degraded ?? '', /over the high watermark 85% and nothing is left to evict/);
      assert.match(pool.degraded ?? '', /pinned image\(s\)/);
      // doctor says it too (a warning: the agent still starts, and reports degraded).
      const doctor = okJson<{
        ok: boolean;
        checks: { name: string; ok: boolean; detail: string }[];
      }>(await host.cli(['doctor', '--json']));
      const check = doctor.checks.find((c) => c.name === 'pool policy');
      assert.equal(check?.ok, false);
      assert.match(check?.detail ?? '', /nothing is left to evict/);
    });

    test("docs/pool-lifecycle.md's pin commands run as written", async (t) => {
      const host = newHost(t, 100);
      const base = 'images/base.tar';
      assert.equal(
        (await host.process(base, await host.put(base, await versionTar('base', 1)))).code,
        0,
      );
      const doc = readFileSync(new URL('../../../docs/pool-lifecycle.md', import.meta.url), 'utf8');
      const block = /## Pins\n\n```sh\n([\s\S]*?)```/.exec(doc)?.[1];
      assert.ok(block, 'the Pins block is in the doc');
      for (const line of block.trim().split('\n')) {
        const args = [...line.replace(/#.*$/, '').matchAll(/'([^']*)'|(\S+)/g)]
          .map((m) => m[1] ?? m[2]!)
          .slice(1);
        const r = await host.cli(args);
        assert.equal(r.code, 0, `${line}: ${r.stderr}`);
      }
      const pins = okJson<{ keys: string[]; images: { image: number }[] }>(
        await host.cli(['pin', '--list', '--json']),
      );
      assert.deepEqual(pins.keys, ['images/base/*']);
      assert.deepEqual(
        pins.images.map((i) => i.image),
        [1],
      );
    });

    test('catch-up sync: never a superseded version; an evicted current version only with room below the low watermark', async (t) => {
      const host = newHost(t, 100);
      const sup = 'images/sup.tar';
      const supETags: string[] = [];
      for (let v = 1; v <= 3; v++) {
        const eTag = await host.put(sup, await versionTar(`sup v${v}`, 1));
        supETags.push(eTag);
        assert.equal((await host.process(sup, eTag)).code, 0);
      }
      const ev = 'images/ev.tar';
      const evETag = await host.put(ev, await versionTar('ev v1', 2));
      assert.equal((await host.process(ev, evETag)).code, 0);
      // Evict every image the policy may take (all are evictable at 2% / 1%).
      okJson(
        await host.cli(['pool', 'evict', '--json'], {
          THINRELAY_POOL_HIGH_WATERMARK: '2%',
          THINRELAY_POOL_LOW_WATERMARK: '1%',
        }),
      );
      const rt = openRuntime({
        config: loadConfig({ stateDir: host.stateDir }, host.env),
        logger: silentLogger,
      });
      host.onRelease(() => rt.close());
      assert.equal(rt.store.images.find(bucket, ev, evETag)?.removed_reason, 'evicted');
      assert.equal(rt.store.images.find(bucket, sup, supETags[0]!)?.removed_reason, 'superseded');
      // The bucket lists the superseded version (as if it were current again) and the evicted one.
      const plan = planSync(rt.store, deploymentItem({ bucket }), {
        present: new Set([sup, ev]),
        wanted: new Map([
          [sup, { eTag: supETags[0]!, size: 1 }],
          [ev, { eTag: evETag, size: 2 * MiB }],
        ]),
        signed: new Map(),
        requests: 1,
      });
      assert.equal(plan.upToDate, 1, 'retention dropped it: never brought back');
      assert.deepEqual(
        plan.process.map((p) => [p.key, p.evicted]),
        [[ev, true]],
      );
      // It comes back only if it fits below the low watermark as the pool is: with ballast, no.
      const pool = await host.pool();
      const ballast = Math.ceil(0.82 * pool.usage.capacityBytes - pool.usage.usedBytes);
      writeFileSync(join(host.mnt, 'ballast'), Buffer.alloc(ballast, 1));
      assert.equal(await roomWithoutEvicting(rt, 2 * MiB), false);
      writeFileSync(join(host.mnt, 'ballast'), '');
      assert.equal(await roomWithoutEvicting(rt, 2 * MiB), true);
    });

    test('two images processed while eviction passes run: both complete', async (t) => {
      const host = newHost(t, 160);
      for (let i = 1; i <= 3; i++) {
        const key = `images/old-${i}.tar`;
        assert.equal(
          (await host.process(key, await host.put(key, await versionTar(key, 2)))).code,
          0,
        );
      }
      const low = { THINRELAY_POOL_HIGH_WATERMARK: '2%', THINRELAY_POOL_LOW_WATERMARK: '1%' };
      const keys = ['images/new-1.tar', 'images/new-2.tar'];
      const eTags = await Promise.all(keys.map(async (k) => host.put(k, await versionTar(k, 8))));
      // Passes that would evict everything they may, again and again, while both images run.
      let running = true;
      const passes = (async () => {
        let n = 0;
        while (running) {
          const r = await host.cli(['pool', 'evict', '--json'], low);
          assert.equal(r.code, 0, r.stderr);
          n++;
        }
        return n;
      })();
      const results = await Promise.all(keys.map((k, i) => host.process(k, eTags[i]!)));
      running = false;
      const n = await passes;
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      t.diagnostic(`${n} eviction passes ran beside the two images`);
      assert.ok(n >= 2, `passes ran meanwhile (${n})`);
      const old = (await host.images(true)).filter((i) => i.key.startsWith('images/old-'));
      assert.ok(
        old.every((i) => i.removedReason === 'evicted'),
        'the passes did evict',
      );
      assert.equal((await host.cli(['gc'])).code, 0);
      assertHostMatchesStore(host.stateDir);
    });

    for (const point of ['evict:marked', 'evict:snapshots-removed']) {
      test(`kill -9 at ${point}: the next gc finishes the eviction`, async (t) => {
        const host = newHost(t, 160);
        for (let i = 1; i <= 3; i++) {
          const key = `images/k${i}.tar`;
          assert.equal(
            (await host.process(key, await host.put(key, await versionTar(key, 4)))).code,
            0,
          );
        }
        // Watermarks so low that the pass evicts every image it may.
        const low = { THINRELAY_POOL_HIGH_WATERMARK: '2%', THINRELAY_POOL_LOW_WATERMARK: '1%' };
        const crashed = await host.cli(['pool', 'evict', '--json'], {
          ...low,
          THINRELAY_CRASH_AT: point,
        });
        assert.equal(crashed.signal, 'SIGKILL', crashed.stderr);
        const evicted = queryState<{ id: number }>(
          host.stateDir,
          `SELECT id FROM images WHERE status = 'removed' AND removed_reason = 'evicted'`,
        );
        assert.equal(
          evicted.length,
          1,
          'the image is recorded evicted before anything is released',
        );
        const gc = await host.cli(['gc', '--json']);
        assert.equal(gc.code, 0, gc.stderr);
        // Gone, not half: no live object of the evicted image, the host equals the store.
        const leftovers = queryState<{ n: number }>(
          host.stateDir,
          `SELECT count(*) AS n FROM storage_objects s
          WHERE s.state != 'removed' AND (s.image_id = ? OR s.id IN (
            SELECT b.volume_id FROM image_blobs ib JOIN blobs b ON b.id = ib.blob_id WHERE ib.image_id = ?))`,
          evicted[0]!.id,
          evicted[0]!.id,
        );
        assert.equal(leftovers[0]!.n, 0);
        assertHostMatchesStore(host.stateDir);
        assert.equal((await host.images()).length, 2, 'the other two are untouched');
      });
    }

    test('eviction racing activate: the activation wins or fails cleanly, never a device on a removed volume', async (t) => {
      const host = newHost(t, 160);
      const key = 'images/race.tar';
      assert.equal(
        (await host.process(key, await host.put(key, await versionTar('race', 2)))).code,
        0,
      );
      const other = 'images/other.tar';
      assert.equal(
        (await host.process(other, await host.put(other, await versionTar('other', 2)))).code,
        0,
      );
      const low = { THINRELAY_POOL_HIGH_WATERMARK: '2%', THINRELAY_POOL_LOW_WATERMARK: '1%' };
      const [activated, evicted] = await Promise.all([
        host.cli(['activate', key, '--json']),
        host.cli(['pool', 'evict', '--json'], low),
      ]);
      assert.equal(evicted.code, 0, evicted.stderr);
      if (activated.code !== 0) assert.match(activated.stderr, /NOT_FOUND|NOT_READY|IN_USE/);
      // Whatever won: every active snapshot's volume is live and sealed, its image not removed.
      const broken = queryState<{ id: number }>(
        host.stateDir,
        `SELECT s.id FROM storage_objects s JOIN storage_objects v ON v.id = s.parent_id
        JOIN images i ON i.id = s.image_id
        WHERE s.kind = 'snapshot' AND s.state = 'active' AND (v.state != 'sealed' OR i.status = 'removed')`,
      );
      assert.deepEqual(broken, []);
      assert.equal((await host.cli(['gc'])).code, 0);
      assertHostMatchesStore(host.stateDir);
    });
  },
);
