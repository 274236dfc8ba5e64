/**
 * Pool lifecycle on a host that is really short of space, end to end: the
 * local stack (s3rver → the real fan-out handler → SQS; the fleet table in
 * dynalite), ONE `thinrelay agent --group default` process whose state dir
 * lives on a small ext4 filesystem this test makes on a loop device, uploads
 * through S3 and `thinrelay fleet wait` after each, as a deploy pipeline runs
 * them. Retention, eviction by watermarks, pins and in-use snapshots are read
 * back through the CLI (`pool status`, `images`, `snapshots`), the agent's
 * log, /healthz and /metrics, and the fleet table.
 *
 * Sizing (the loop backend on ext4: no reflinks, so an image costs its volume
 * plus its snapshot's sparse copy, about 2 × (payload + 0.4 MiB)). The churn
 * images carry 1 MiB of random bytes (≈3 MiB each in the pool). The pool is
 * sized so that what retention keeps (newest 2 of 3 keys, a 4th key, the
 * database) stays well under the high watermark — otherwise eviction would
 * take the second-newest versions and "exactly the newest N" could not hold —
 * and a ballast file written beside the state dir mid-run pushes it over:
 * eviction must then free about 4 images, more than the older versions hold,
 * so a current version goes too (never the pinned one, never the mounted one).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalStack, type LocalStack } from '../../host-agent/src/demo/local-stack.js';
import { startAgent, type AgentProcess, type LogLine } from '../helpers/agent-process.js';
import { okJson, runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { poolUsage } from '../helpers/pool-usage.js';
import { until } from '../helpers/until.js';
import { needsRootAndTools } from '../helpers/root.js';
import { packTar } from '../helpers/tar-fixtures.js';

const MiB = 1024 ** 2;
const needs = needsRootAndTools(['mkfs.ext4', 'losetup', 'mount', 'umount', 'truncate', 'sync']);

/** The contract's defaults (THINRELAY_RETAIN_VERSIONS, THINRELAY_POOL_*_WATERMARK): not set for scenario 1. */
const RETAIN = 2;
const HIGH = 85;
const LOW = 80;
const VERSIONS = 30;
/** Scenario 2's watermarks: low, so that pins alone go over with room to spare. */
const PINS_HIGH = 20;
const PINS_LOW = 15;

const churnKeys = ['images/churn-a.tar', 'images/churn-b.tar', 'images/churn-c.tar'] as const;
const pinnedKey = churnKeys[1];
const heldKey = 'images/held.tar';

interface ImageJson {
  id: number;
  key: string;
  etag: string;
  status: string;
  pinned?: boolean;
  removedReason?: string | null;
  removedDetail?: string | null;
  lastActivatedAt?: string | null;
  lastUsedAt?: string | null;
}

interface SnapshotJson {
  id: number;
  state: string;
  devicePath: string | null;
  imageId: number | null;
  key: string | null;
}

interface PoolStatusJson {
  policy?: Record<string, unknown>;
  usage?: {
    capacityBytes: number;
    usedBytes: number;
    dataPercent: number;
    metadataPercent: number | null;
  };
  holders?: {
    inUseBytes: number;
    pinnedBytes: number;
    currentBytes: number;
    evictableBytes: number;
  };
  degraded?: string | null;
}

type Usage = NonNullable<PoolStatusJson['usage']>;

const bare = (eTag: string): string => eTag.replace(/"/g, '');
const mib = (n: number): string => `${(n / MiB).toFixed(2)} MiB`;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A rootfs tar whose content differs per call (random payload). */
const rootfs = (marker: string, payloadBytes: number): Promise<Buffer> =>
  packTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hostname', content: `${marker}\n` },
    { name: 'data/', type: 'directory' },
    { name: 'data/payload.bin', content: randomBytes(payloadBytes) },
  ]);

/**
 * Release steps run last-registered first, every one of them even when an
 * earlier one throws; the first error is rethrown at the end.
 */
class Cleanup {
  private readonly steps: { what: string; fn: () => unknown }[] = [];
  add(what: string, fn: () => unknown): void {
    this.steps.push({ what, fn });
  }
  async run(): Promise<void> {
    const errors: unknown[] = [];
    for (const s of this.steps.reverse()) {
      try {
        await s.fn();
      } catch (err) {
        errors.push(new Error(`cleanup "${s.what}" failed`, { cause: err }));
      }
    }
    if (errors.length > 0) throw errors[0];
  }
}

function loopsBackedUnder(dir: string): string[] {
  const out = execFileSync('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], {
    encoding: 'utf8',
  });
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([dev, file]) => dev !== undefined && file !== undefined && file.startsWith(dir + '/'))
    .map(([dev]) => dev!);
}

function mountpointsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' ')[4]!)
    .filter((m) => m === dir || m.startsWith(dir + '/'));
}

/** The device mounted at `mountpoint`, or undefined. */
function deviceMountedAt(mountpoint: string): string | undefined {
  for (const l of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4] !== mountpoint) continue;
    const sep = f.indexOf('-');
    return f[sep + 2];
  }
  return undefined;
}

interface StateFs {
  /** Where the filesystem is mounted; the state dir is a directory in it. */
  mnt: string;
  stateDir: string;
}

/**
 * An ext4 filesystem of `sizeMiB` on a loop device, mounted, holding the
 * agent's state dir (no root reserve: -m 0, so free = available). Released
 * by `cleanup`, which also fails the test if a loop device or mount is left.
 */
function makeStateFs(cleanup: Cleanup, name: string, sizeMiB: number): StateFs {
  const work = mkdtempSync(join(tmpdir(), `thinrelay-lifecycle-${name}-`));
  cleanup.add('no loop device or mount left', () => {
    const loops = loopsBackedUnder(work);
    const mounts = mountpointsUnder(work);
    for (const m of mounts.reverse()) execFileSync('umount', ['-l', m]);
    for (const l of loopsBackedUnder(work)) execFileSync('losetup', ['-d', l]);
    rmSync(work, { recursive: true, force: true });
    assert.deepEqual(mounts, [], 'mounts left behind');
    assert.deepEqual(loops, [], 'loop devices left behind');
  });
  const img = join(work, 'fs.img');
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', `${sizeMiB}M`, img]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', img]);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  // mount -o loop attaches with autoclear: unmounting detaches it.
  cleanup.add('unmount the state filesystem', () => execFileSync('umount', [mnt]));
  return { mnt, stateDir: join(mnt, 'state') };
}

function agentEnv(stack: LocalStack, fs: StateFs, extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return {
    ...stack.env,
    THINRELAY_STATE_DIR: fs.stateDir,
    THINRELAY_RESERVE_BYTES: '16M',
    THINRELAY_VOLUME_SIZE: '64M',
    THINRELAY_WAIT_SECONDS: '1',
    THINRELAY_HEARTBEAT_SECONDS: '5',
    THINRELAY_SYNC_SECONDS: '600',
    THINRELAY_POOL_CHECK_SECONDS: '2',
    ...extra,
  };
}

/** The agent as a child process; stopped, its pool destroyed and its state dir released by cleanup. */
async function startHost(
  cleanup: Cleanup,
  stack: LocalStack,
  hostId: string,
  env: NodeJS.ProcessEnv,
): Promise<{ agent: AgentProcess; url: string }> {
  const agent = startAgent(
    ['--group', 'default', '--host-id', hostId, '--metrics-addr', '127.0.0.1:0'],
    env,
  );
  cleanup.add('stop the agent, destroy its pool, release its state dir', async () => {
    await agent.stop(10_000);
    await runCli(['pool', 'destroy', '--force'], env);
    releaseStateDir(env.THINRELAY_STATE_DIR!);
  });
  const endpoint = await agent.waitForLog((l) => l.msg === 'health and metrics endpoint');
  await agent.waitForLog((l) => l.msg === 'sync round done', 60_000);
  // Registered (queue made, host item live) before the first upload.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await runCli(['fleet', 'hosts', '--json'], stack.env);
    const live =
      r.code === 0 ? (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live : 0;
    if (live === 1) break;
    assert.ok(Date.now() < deadline, `the host never registered: ${r.stdout}${r.stderr}`);
    await sleep(200);
  }
  return { agent, url: endpoint.url as string };
}

async function upload(stack: LocalStack, key: string, body: Buffer): Promise<string> {
  const out = await stack.s3.send(
    new PutObjectCommand({ Bucket: stack.bucket, Key: key, Body: body }),
  );
  assert.ok(out.ETag, `no ETag for ${key}`);
  return bare(out.ETag);
}

/** `thinrelay fleet wait KEY --etag E`: must exit 0 (every live host has that version ready). */
async function fleetWait(stack: LocalStack, key: string, eTag: string): Promise<void> {
  const r = await runCli(
    ['fleet', 'wait', key, '--etag', eTag, '--timeout', '90s', '--interval', '100ms'],
    stack.env,
  );
  assert.equal(r.code, 0, `fleet wait ${key} ${eTag}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { result: string; etag: string };
  assert.equal(last.result, 'ready');
  assert.equal(bare(last.etag), eTag);
}

async function poolStatus(env: NodeJS.ProcessEnv): Promise<PoolStatusJson & { usage: Usage }> {
  const s = okJson<PoolStatusJson>(await runCli(['pool', 'status', '--json'], env));
  assert.ok(s.usage, `pool status --json has no "usage": ${JSON.stringify(s)}`);
  assert.ok(s.usage.capacityBytes > 0 && s.usage.usedBytes >= 0, JSON.stringify(s.usage));
  assert.ok(
    Math.abs(s.usage.dataPercent - (100 * s.usage.usedBytes) / s.usage.capacityBytes) < 0.5,
    `dataPercent ${s.usage.dataPercent} is usedBytes/capacityBytes: ${JSON.stringify(s.usage)}`,
  );
  return s as PoolStatusJson & { usage: Usage };
}

const images = async (env: NodeJS.ProcessEnv, all = false): Promise<ImageJson[]> =>
  okJson<ImageJson[]>(await runCli(['images', ...(all ? ['--all'] : []), '--json'], env));

/** Ready images by key: their ETags, sorted. */
async function readyByKey(env: NodeJS.ProcessEnv): Promise<Map<string, string[]>> {
  const m = new Map<string, string[]>();
  for (const i of await images(env)) {
    if (i.status !== 'ready') continue;
    m.set(i.key, [...(m.get(i.key) ?? []), bare(i.etag)].sort());
  }
  return m;
}

const isEviction = (l: LogLine): boolean => l.msg === 'image evicted';
const mentionsLowSpace = (l: LogLine): boolean => JSON.stringify(l).includes('LOW_SPACE');

/** The fleet table's view of this host's item for `key` (fleet status KEY --json). */
async function fleetHostState(stack: LocalStack, key: string): Promise<string | undefined> {
  const r = await runCli(['fleet', 'status', key, '--json'], stack.env);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /LOW_SPACE/);
  return (JSON.parse(r.stdout) as { hosts: { state: string }[] }).hosts[0]?.state;
}

async function assertNoLowSpace(
  stack: LocalStack,
  env: NodeJS.ProcessEnv,
  agent: AgentProcess,
): Promise<void> {
  assert.deepEqual(agent.logs.filter(mentionsLowSpace), [], 'LOW_SPACE in the agent log');
  const failed = okJson<unknown[]>(await runCli(['failed', '--json'], env));
  assert.deepEqual(failed, [], 'thinrelay failed --json');
  const fleet = await runCli(['fleet', 'status', '--json'], stack.env);
  assert.equal(fleet.code, 0, fleet.stderr);
  assert.doesNotMatch(fleet.stdout, /LOW_SPACE/, 'LOW_SPACE in fleet status');
}

/** Fills `path` with `bytes` of random data (incompressible, really allocated), flushed. */
function writeBallast(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    const chunk = randomBytes(MiB);
    for (let left = bytes; left > 0; left -= MiB) writeSync(fd, chunk, 0, Math.min(MiB, left));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

describe('pool lifecycle on a full host, through the fleet', { skip: needs }, () => {
  test(
    `${VERSIONS} versions each of 3 keys into a pool of ~35 such images: retention keeps the newest ${RETAIN}, ` +
      'a pressure spike evicts (older versions first, then a current one) but never the pinned ' +
      'key or a mounted snapshot; never LOW_SPACE',
    { timeout: 540_000 },
    async (t: TestContext) => {
      const started = Date.now();
      const cleanup = new Cleanup();
      t.after(() => cleanup.run());
      const stack = await startLocalStack({ bucket: 'thinrelay-lifecycle', maxReceiveCount: 3 });
      cleanup.add('stop the local stack', () => stack.stop());
      const fs = makeStateFs(cleanup, 'churn', 144);
      const env = agentEnv(stack, fs, {});
      const { agent, url } = await startHost(cleanup, stack, 'host-churn', env);

      // The pinned key, pinned through the CLI (a key pattern: its current version is protected).
      const pin = await runCli(['pin', pinnedKey, '--json'], env);
      assert.equal(pin.code, 0, `thinrelay pin ${pinnedKey}: ${pin.stderr}`);

      // A 4th key: one version made ready, a snapshot of it activated, mounted
      // read-write, a marker written — and kept mounted for the whole run.
      const heldEtags: string[] = [];
      heldEtags.push(await upload(stack, heldKey, await rootfs(`${heldKey} v1`, 64 * 1024)));
      await fleetWait(stack, heldKey, heldEtags[0]!);
      const activated = okJson<{ snapshotId: number; devicePath: string }>(
        await runCli(['activate', heldKey, '--json'], env),
      );
      const heldMnt = mkdtempSync(join(tmpdir(), 'thinrelay-lifecycle-held-'));
      cleanup.add('unmount the held snapshot', () => {
        if (deviceMountedAt(heldMnt) !== undefined) execFileSync('umount', [heldMnt]);
        rmSync(heldMnt, { recursive: true, force: true });
      });
      execFileSync('mount', [activated.devicePath, heldMnt]);
      const marker = randomBytes(256 * 1024);
      writeFileSync(join(heldMnt, 'marker.bin'), marker);
      execFileSync('sync', ['-f', join(heldMnt, 'marker.bin')]);
      const heldV1 = (await images(env)).find((i) => i.key === heldKey)!;

      const current = new Map<string, string>([[heldKey, heldEtags[0]!]]);
      const uploaded = new Map<string, string[]>(churnKeys.map((k) => [k, []]));
      let imageBytes = 0;
      let maxUsed: Usage | undefined;
      let spikeEvictions: LogLine[] = [];
      const uploadTimes: number[] = [];
      // The 4th key's later versions: two before the spike (v1 is then
      // superseded while its snapshot is mounted), two after it.
      const heldAt = new Map([
        [3, 2],
        [5, 3],
        [VERSIONS - 8, 4],
        [VERSIONS - 4, 5],
      ]);
      const spikeAt = 12;

      /**
       * Ballast beside the state dir takes the pool over the high watermark by
       * enough that eviction must free ~4 images: all older versions (3 churn
       * images and a small one of the 4th key) are not enough.
       */
      async function spike(): Promise<LogLine[]> {
        assert.deepEqual(
          agent.logs.filter(isEviction),
          [],
          'retention alone kept the churn under the high watermark: nothing evicted before the spike',
        );
        const { usage } = await poolStatus(env);
        const low = (LOW / 100) * usage.capacityBytes;
        const ballast = Math.ceil((low - usage.usedBytes + 4 * imageBytes) / MiB) * MiB;
        assert.ok(
          usage.usedBytes + ballast + imageBytes < usage.capacityBytes,
          `pool too small for the spike: ${mib(usage.usedBytes)} used of ` +
            `${mib(usage.capacityBytes)}, ballast ${mib(ballast)}`,
        );
        assert.ok(usage.usedBytes + ballast > (HIGH / 100) * usage.capacityBytes);
        const seen = agent.logs.length;
        const ballastFile = join(fs.mnt, 'ballast.bin');
        cleanup.add('remove the ballast', () => rmSync(ballastFile, { force: true }));
        writeBallast(ballastFile, ballast);
        // The agent's timer pass (THINRELAY_POOL_CHECK_SECONDS=2) brings it below the low watermark.
        const after = await until(
          'an eviction pass to bring the pool below the low watermark',
          async () => {
            const s = await poolStatus(env);
            return s.usage.usedBytes <= (LOW / 100) * s.usage.capacityBytes ? s : undefined;
          },
          30_000,
        );
        assert.equal(after.degraded, null, `degraded: ${after.degraded}`);
        // Every eviction the store recorded has its log line (the log follows the store).
        const evicted = await until('a log line for every eviction recorded', async () => {
          const recorded = (await images(env, true)).filter((i) => i.removedReason === 'evicted');
          const logged = agent.logs.slice(seen).filter(isEviction);
          return logged.length === recorded.length ? logged : undefined;
        });
        for (const e of evicted) {
          assert.equal(typeof e.key, 'string', JSON.stringify(e));
          assert.equal(typeof e.eTag, 'string', JSON.stringify(e));
          assert.ok(typeof e.freedBytes === 'number' && e.freedBytes > 0, JSON.stringify(e));
          assert.ok('lastUsed' in e && 'image' in e, JSON.stringify(e));
          assert.ok(
            !(e.key === pinnedKey && bare(e.eTag as string) === current.get(pinnedKey)),
            `the pinned key's current version was evicted: ${JSON.stringify(e)}`,
          );
          assert.ok(
            !(e.key === heldKey && bare(e.eTag as string) === heldEtags[0]),
            `the version with a mounted snapshot was evicted: ${JSON.stringify(e)}`,
          );
        }
        // Every key's older version (the pinned key's too: a key pin protects its
        // current version only; the 4th key's v1 is in use, its v2 is the older
        // one) went first, then at least one current version.
        const tag = (e: LogLine): string => `${e.key as string} ${bare(e.eTag as string)}`;
        const older = [
          ...churnKeys.map((k) => `${k} ${uploaded.get(k)!.at(-2)!}`),
          `${heldKey} ${heldEtags.at(-2)!}`,
        ].sort();
        const evictedCurrent = evicted.filter(
          (e) => current.get(e.key as string) === bare(e.eTag as string),
        );
        assert.deepEqual(
          evicted.slice(0, older.length).map(tag).sort(),
          older,
          `older versions first: ${JSON.stringify(evicted)}`,
        );
        assert.deepEqual(
          evicted.slice(older.length),
          evictedCurrent,
          `then current versions: ${JSON.stringify(evicted)}`,
        );
        assert.ok(evictedCurrent.length >= 1, `a current version too: ${JSON.stringify(evicted)}`);
        // The pinned key's current version and the mounted one are still there.
        const rows = await images(env, true);
        const pinnedRow = rows.find(
          (i) => i.key === pinnedKey && bare(i.etag) === current.get(pinnedKey),
        );
        assert.equal(pinnedRow?.status, 'ready', JSON.stringify(pinnedRow));
        assert.equal(pinnedRow?.pinned, true, JSON.stringify(pinnedRow));
        // A key whose current version was evicted says so in the fleet table.
        const gone = evictedCurrent[0]!.key as string;
        await until(
          `fleet status ${gone}: evicted`,
          async () => (await fleetHostState(stack, gone)) === 'evicted',
        );
        unlinkSync(ballastFile);
        execFileSync('sync', ['-f', fs.mnt]);
        return evicted;
      }

      for (let v = 1; v <= VERSIONS; v++) {
        for (const key of churnKeys) {
          // Read in this process (helpers/pool-usage.ts): a CLI run per image was a third of
          // this file's time; the CLI's own figure is checked after the churn.
          const before = v === 1 ? (await poolUsage(env)).usedBytes : 0;
          const t0 = Date.now();
          const eTag = await upload(stack, key, await rootfs(`${key} v${v}`, MiB));
          await fleetWait(stack, key, eTag);
          uploadTimes.push(Date.now() - t0);
          uploaded.get(key)!.push(eTag);
          current.set(key, eTag);
          const usage = await poolUsage(env);
          if (v === 1) imageBytes = Math.max(imageBytes, usage.usedBytes - before);
          if (maxUsed === undefined || usage.usedBytes > maxUsed.usedBytes) maxUsed = usage;
          assert.ok(
            usage.usedBytes <= (HIGH / 100) * usage.capacityBytes + imageBytes,
            `after ${key} v${v}: ${mib(usage.usedBytes)} used of ${mib(usage.capacityBytes)} ` +
              `(${usage.dataPercent}%), more than ${HIGH}% + one image (${mib(imageBytes)})`,
          );
        }
        if (v === 1)
          assert.ok(
            imageBytes > MiB && imageBytes < 8 * MiB,
            `one churn image costs ${mib(imageBytes)} in the pool`,
          );
        const heldVersion = heldAt.get(v);
        if (heldVersion !== undefined) {
          const eTag = await upload(
            stack,
            heldKey,
            await rootfs(`${heldKey} v${heldVersion}`, 64 * 1024),
          );
          await fleetWait(stack, heldKey, eTag);
          heldEtags.push(eTag);
          current.set(heldKey, eTag);
        }
        if (v === spikeAt) spikeEvictions = await spike();
      }

      // The reads after each image were in this process: the CLI reports the same use (the
      // agent's database writes may move a loop pool's figure by a little between the two).
      const cli = (await poolStatus(env)).usage;
      const mine = await poolUsage(env);
      assert.equal(cli.capacityBytes, mine.capacityBytes, 'pool status --json: the same capacity');
      assert.ok(
        Math.abs(cli.usedBytes - mine.usedBytes) < MiB,
        `pool status --json: the same use (${cli.usedBytes} and ${mine.usedBytes} bytes)`,
      );

      // Eviction happened only in the spike: retention alone held the churn.
      assert.deepEqual(
        agent.logs.filter(isEviction),
        spikeEvictions,
        'no eviction outside the spike',
      );
      await assertNoLowSpace(stack, env, agent);

      // Each key's live versions are exactly its newest RETAIN.
      const ready = await readyByKey(env);
      for (const key of churnKeys)
        assert.deepEqual(ready.get(key), uploaded.get(key)!.slice(-RETAIN).sort(), key);
      assert.deepEqual(ready.get(heldKey), heldEtags.slice(-RETAIN).sort(), heldKey);
      assert.deepEqual([...ready.keys()].sort(), [...churnKeys, heldKey].sort());
      const live = await images(env);
      assert.deepEqual(
        live
          .filter((i) => i.pinned === true)
          .map((i) => [i.key, bare(i.etag)])
          .sort(),
        [[pinnedKey, current.get(pinnedKey)]],
        'pinned: the pinned key’s current version only',
      );

      // Every older version is removed, and says why.
      const all = await images(env, true);
      const spikeEvicted = new Set(
        spikeEvictions.map((e) => `${e.key as string} ${bare(e.eTag as string)}`),
      );
      for (const key of churnKeys) {
        for (const eTag of uploaded.get(key)!.slice(0, -RETAIN)) {
          const rows = all.filter((i) => i.key === key && bare(i.etag) === eTag);
          assert.ok(rows.length >= 1, `${key} ${eTag} listed by images --all`);
          for (const row of rows) {
            assert.equal(row.status, 'removed', JSON.stringify(row));
            const want = spikeEvicted.has(`${key} ${eTag}`) ? 'evicted' : 'superseded';
            assert.equal(row.removedReason, want, JSON.stringify(row));
            if (want === 'evicted') {
              const detail = JSON.parse(row.removedDetail ?? 'null') as unknown;
              assert.ok(detail !== null && typeof detail === 'object', JSON.stringify(row));
              assert.match(row.removedDetail!, /watermark|data|high/i);
            }
          }
        }
      }
      assert.ok(all.filter((i) => i.removedReason === 'superseded').length >= 3 * (VERSIONS - 4));

      // The mounted snapshot of the 4th key's first version: still there,
      // still mounted from the same device, its file intact; its image
      // superseded (or still listed) but never evicted.
      const v1Rows = all.filter((i) => i.id === heldV1.id);
      assert.equal(v1Rows.length, 1);
      assert.ok(
        v1Rows[0]!.status === 'ready' ||
          (v1Rows[0]!.status === 'removed' && v1Rows[0]!.removedReason === 'superseded'),
        JSON.stringify(v1Rows[0]),
      );
      assert.ok(v1Rows[0]!.lastActivatedAt, `activated: ${JSON.stringify(v1Rows[0])}`);
      assert.ok(v1Rows[0]!.lastUsedAt, `seen in use: ${JSON.stringify(v1Rows[0])}`);
      const snaps = okJson<SnapshotJson[]>(await runCli(['snapshots', '--json'], env));
      const heldSnap = snaps.find((s) => s.id === activated.snapshotId);
      assert.ok(heldSnap, `snapshot ${activated.snapshotId} kept: ${JSON.stringify(snaps)}`);
      assert.equal(heldSnap.devicePath, activated.devicePath);
      assert.equal(heldSnap.imageId, heldV1.id);
      assert.equal(deviceMountedAt(heldMnt), activated.devicePath, 'still mounted');
      const backing = execFileSync(
        'losetup',
        ['--list', '--noheadings', '--output', 'BACK-FILE', activated.devicePath],
        { encoding: 'utf8' },
      ).trim();
      assert.ok(
        backing.startsWith(fs.stateDir + '/pool/') && existsSync(backing),
        `${activated.devicePath} still backed by its pool file: "${backing}"`,
      );
      assert.equal(sha256(readFileSync(join(heldMnt, 'marker.bin'))), sha256(marker));

      // The agent is healthy; its metrics count what happened.
      const health = await fetch(`${url}/healthz`);
      assert.equal(health.status, 200, await health.text());
      const metrics = await (await fetch(`${url}/metrics`)).text();
      assert.match(metrics, /^thinrelay_pool_degraded 0$/m);
      const retired = /^thinrelay_pool_retirements_total\{reason="superseded"\} (\d+)$/m.exec(
        metrics,
      );
      assert.ok(retired !== null && Number(retired[1]) >= 3 * (VERSIONS - 4), metrics);
      const evictions = [...metrics.matchAll(/^thinrelay_pool_evictions_total\{[^}]*\} (\d+)$/gm)];
      assert.equal(
        evictions.reduce((n, m) => n + Number(m[1]), 0),
        spikeEvictions.length,
        metrics,
      );

      const perUpload = uploadTimes.reduce((a, b) => a + b, 0) / uploadTimes.length;
      t.diagnostic(
        `${uploadTimes.length} churn uploads, ${(perUpload / 1000).toFixed(2)} s each ` +
          `(upload + fleet wait); one image ${mib(imageBytes)}; peak ${mib(maxUsed!.usedBytes)} ` +
          `of ${mib(maxUsed!.capacityBytes)} (${maxUsed!.dataPercent}%); spike evicted ` +
          `${spikeEvictions.length}; whole test ${((Date.now() - started) / 1000).toFixed(1)} s`,
      );
      t.diagnostic(
        'spike evictions: ' +
          spikeEvictions
            .map(
              (e) =>
                `${e.key as string}${e.current === true ? ' (current)' : ''} freed ${mib(Number(e.freedBytes))}`,
            )
            .join('; '),
      );
      assert.equal((await agent.stop()).code, 0);
      assert.deepEqual(hostInventory(fs.stateDir).mounts, [], 'the agent left no mount behind');
    },
  );

  test(
    'pins alone over the high watermark: pool status degraded, /healthz 503, ' +
      'thinrelay_pool_degraded 1; nothing pinned evicted, the unpinned image is',
    { timeout: 180_000 },
    async (t: TestContext) => {
      const cleanup = new Cleanup();
      t.after(() => cleanup.run());
      const stack = await startLocalStack({
        bucket: 'thinrelay-lifecycle-pins',
        maxReceiveCount: 3,
      });
      cleanup.add('stop the local stack', () => stack.stop());
      const fs = makeStateFs(cleanup, 'pins', 112);
      // Low watermarks, so that three pinned images are over the high one
      // with plenty of room left for them to be admitted.
      const env = agentEnv(stack, fs, {
        THINRELAY_PINS: 'images/pinned/*',
        THINRELAY_POOL_HIGH_WATERMARK: `${PINS_HIGH}%`,
        THINRELAY_POOL_LOW_WATERMARK: `${PINS_LOW}%`,
      });
      const { agent, url } = await startHost(cleanup, stack, 'host-pins', env);

      // First a small unpinned image, while there is room. Once the pinned
      // ones take the pool over the high watermark it is the only thing
      // eviction may take: it may be gone before the fleet table ever says
      // ready, so its own processing is what is waited for.
      const loose = 'images/loose.tar';
      const looseEtag = await upload(stack, loose, await rootfs(loose, 64 * 1024));
      await until(
        `${loose} processed`,
        async () =>
          (await images(env, true)).some(
            (i) => i.key === loose && (i.status === 'ready' || i.removedReason === 'evicted'),
          ),
        60_000,
      );
      const pinned = new Map<string, string>();
      for (const n of [1, 2, 3]) {
        const key = `images/pinned/p${n}.tar`;
        const eTag = await upload(stack, key, await rootfs(key, 7 * MiB));
        await fleetWait(stack, key, eTag);
        pinned.set(key, eTag);
      }

      const status = await until(
        'pool status degraded',
        async () => {
          const s = await poolStatus(env);
          return typeof s.degraded === 'string' ? s : undefined;
        },
        20_000,
      );
      assert.match(status.degraded!, /pinned/, status.degraded!);
      assert.ok(status.holders, JSON.stringify(status));
      assert.ok(status.usage.dataPercent > PINS_HIGH, JSON.stringify(status.usage));
      // The scenario itself: the pinned images' bytes alone are over the high watermark.
      assert.ok(
        status.holders.pinnedBytes > (PINS_HIGH / 100) * status.usage.capacityBytes,
        `pins alone over the high watermark: ${JSON.stringify(status)}`,
      );
      assert.equal(status.holders.evictableBytes, 0, JSON.stringify(status.holders));
      assert.equal(status.holders.currentBytes, 0, JSON.stringify(status.holders));

      // The agent's own passes (after each image, every THINRELAY_POOL_CHECK_SECONDS) see it too.
      const body = await until('/healthz 503', async () => {
        const health = await fetch(`${url}/healthz`);
        const b = (await health.json()) as { status: string; degraded?: string };
        return health.status === 503 ? b : undefined;
      });
      assert.equal(body.status, 'degraded', JSON.stringify(body));
      assert.match(body.degraded ?? '', /pinned/, JSON.stringify(body));
      const metrics = await (await fetch(`${url}/metrics`)).text();
      assert.match(metrics, /^thinrelay_pool_degraded 1$/m);
      const pinnedBytes = /^thinrelay_pool_pinned_bytes (\d+)$/m.exec(metrics);
      assert.ok(pinnedBytes !== null && Number(pinnedBytes[1]) > 0, metrics);

      // Nothing pinned evicted; the unpinned one was.
      const evicted = agent.logs.filter(isEviction);
      assert.deepEqual(
        evicted.map((e) => [e.key, bare(e.eTag as string)]),
        [[loose, looseEtag]],
      );
      const ready = await readyByKey(env);
      for (const [key, eTag] of pinned) assert.deepEqual(ready.get(key), [eTag], key);
      assert.equal(ready.has(loose), false);
      for (const i of await images(env))
        if (i.key.startsWith('images/pinned/')) assert.equal(i.pinned, true, JSON.stringify(i));
      const looseRow = (await images(env, true)).find((i) => i.key === loose)!;
      assert.equal(looseRow.status, 'removed');
      assert.equal(looseRow.removedReason, 'evicted');
      await until(
        `fleet status ${loose}: evicted`,
        async () => (await fleetHostState(stack, loose)) === 'evicted',
      );
      await assertNoLowSpace(stack, env, agent);
      assert.equal((await agent.stop()).code, 0);
    },
  );
});
