/**
 * Bad images are the image's fault, a host out of space is the host's
 * (issue 20, items 5–8): hostile archives built here — 130 one-file layers,
 * a chain past its limit, a long chain on a small state filesystem, an xz
 * bomb against the spool limit and against the reserve, a huge xattr, 70,000
 * hard links, a uid of 2^33 — processed by the built CLI (s3rver, real loop
 * devices, a small loop-mounted ext4 where space matters) or the unpacker;
 * and a group agent whose pool has no room: LOW_SPACE is retried within its
 * budget, then recorded failed, and `fleet status`/`fleet wait` say so.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { classifyFailure, isPermanentFailureCode } from '../../host-agent/src/pipeline/failure.js';
import { startLocalStack } from '../../host-agent/src/demo/local-stack.js';
import { ImageError } from '../../host-agent/src/errors.js';
import { unpackArchive } from '../../host-agent/src/layer/index.js';
import { startAgent } from '../helpers/agent-process.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { queryState, smallFilesystem } from '../helpers/small-fs.js';
import {
  chunked,
  dockerSaveArchive,
  gzip,
  packTar,
  paxHeader,
  rawMember,
  rawTar,
  endOfArchive,
} from '../helpers/tar-fixtures.js';
import { until } from '../helpers/until.js';

const bucket = 'thinrelay-image-faults';
const MiB = 1024 ** 2;
const needs = needsRootAndTools(['xz', 'mkfs.ext4', 'losetup', 'setfattr']);
const xz = (b: Buffer): Buffer =>
  execFileSync('xz', ['-1', '-c'], { input: b, maxBuffer: 1 << 28 });
const never = new AbortController().signal;

/** The lowest free space seen on the filesystem of `dir` while `run` runs (sampled every 5 ms). */
async function lowestFree<T>(dir: string, run: () => Promise<T>): Promise<[T, number]> {
  let lowest = Infinity;
  const sample = (): void => {
    const st = statfsSync(dir);
    lowest = Math.min(lowest, st.bavail * st.bsize);
  };
  const timer = setInterval(sample, 5);
  try {
    const r = await run();
    sample();
    return [r, lowest];
  } finally {
    clearInterval(timer);
  }
}

function imageRow(stateDir: string, key: string): { status: string; error_code: string | null } {
  return queryState<{ status: string; error_code: string | null }>(
    stateDir,
    `SELECT status, error_code FROM images WHERE key = ? ORDER BY id DESC LIMIT 1`,
    key,
  )[0]!;
}

describe(
  'bad images as image faults, space as the host’s (issue 20)',
  { skip: needs, timeout: 900_000 },
  () => {
    let s3: S3Emulator;
    before(async () => {
      s3 = await startS3Emulator();
      await s3.createBucket(bucket);
    });
    after(async () => {
      await s3?.stop();
    });

    /** A host's env on `stateDir` (a fresh temp dir by default), destroyed and released after the test. */
    function host(
      t: TestContext,
      env: NodeJS.ProcessEnv,
      stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-image-faults-')),
    ): { env: NodeJS.ProcessEnv; stateDir: string; cli: (...a: string[]) => Promise<CliResult> } {
      const full = {
        ...s3EnvFor(s3),
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BUCKET: bucket,
        THINRELAY_RESERVE_BYTES: '0',
        THINRELAY_VOLUME_SIZE: '32M',
        ...env,
      };
      t.after(async () => {
        await runCli(['pool', 'destroy', '--force'], full);
        releaseStateDir(stateDir);
      });
      return { env: full, stateDir, cli: (...a) => runCli(a, full) };
    }

    test('item 5: 130 one-file layers are refused LIMIT_LAYER_COUNT before any layer is applied (read by range and spooled)', async (t) => {
      const h = host(t, {});
      const layers = await Promise.all(
        Array.from({ length: 130 }, (_, i) =>
          packTar([{ name: `f${i}`, content: `layer ${i}\n` }]),
        ),
      );
      const archive = await dockerSaveArchive(layers);
      await s3.putObject(bucket, 'hostile/layers.tar', archive);
      await s3.putObject(bucket, 'hostile/layers.tar.gz', gzip(archive));
      for (const key of ['hostile/layers.tar', 'hostile/layers.tar.gz']) {
        const r = await h.cli('process-image', '--s3-key', key);
        assert.equal(r.code, 1, `${key}: ${r.stderr}`);
        assert.match(
          r.stderr,
          /\[LIMIT_LAYER_COUNT\] the image has 130 layers, more than the limit of 128/,
        );
        assert.deepEqual(imageRow(h.stateDir, key), {
          status: 'failed',
          error_code: 'LIMIT_LAYER_COUNT',
        });
        const volumes = queryState<{ n: number }>(
          h.stateDir,
          `SELECT COUNT(*) AS n FROM storage_objects WHERE kind = 'volume'`,
        )[0]!.n;
        assert.equal(volumes, 0, 'no layer volume was ever made');
      }
      assert.ok(isPermanentFailureCode('LIMIT_LAYER_COUNT'), 'toward the DLQ, never retried');
      // The limit is configurable (THINRELAY_MAX_LAYERS): three layers over a limit of two.
      const three = await dockerSaveArchive(layers.slice(0, 3));
      await s3.putObject(bucket, 'hostile/three-layers.tar', three);
      const lowered = await runCli(['process-image', '--s3-key', 'hostile/three-layers.tar'], {
        ...h.env,
        THINRELAY_MAX_LAYERS: '2',
      });
      assert.equal(lowered.code, 1, lowered.stderr);
      assert.match(
        lowered.stderr,
        /\[LIMIT_LAYER_COUNT\] the image has 3 layers, more than the limit of 2/,
      );
    });

    test('item 5: a chain past THINRELAY_MAX_CHAIN_BYTES is refused LIMIT_CHAIN_BYTES (plain layers before work, gzip layers as read)', async (t) => {
      const h = host(t, { THINRELAY_MAX_CHAIN_BYTES: '1M' });
      const plain = await Promise.all(
        [0, 1, 2].map((i) => packTar([{ name: `p${i}.bin`, content: randomBytes(400 * 1024) }])),
      );
      const zeros = await Promise.all(
        [0, 1, 2].map((i) =>
          packTar([{ name: `z${i}.bin`, content: Buffer.alloc(400 * 1024, i) }]),
        ),
      );
      await s3.putObject(bucket, 'hostile/chain-plain.tar', await dockerSaveArchive(plain));
      await s3.putObject(
        bucket,
        'hostile/chain-gzip-layers.tar',
        await dockerSaveArchive(zeros, [], { gzipLayers: true }),
      );
      await s3.putObject(
        bucket,
        'hostile/chain-gzip-layers.tar.gz',
        gzip(await dockerSaveArchive(zeros, [], { gzipLayers: true })),
      );
      for (const key of [
        'hostile/chain-plain.tar',
        'hostile/chain-gzip-layers.tar',
        'hostile/chain-gzip-layers.tar.gz',
      ]) {
        const r = await h.cli('process-image', '--s3-key', key);
        assert.equal(r.code, 1, `${key}: ${r.stderr}`);
        assert.match(r.stderr, /\[LIMIT_CHAIN_BYTES\]/, key);
        assert.deepEqual(imageRow(h.stateDir, key), {
          status: 'failed',
          error_code: 'LIMIT_CHAIN_BYTES',
        });
        assert.deepEqual(
          hostInventory(h.stateDir).poolFiles,
          [],
          `${key}: nothing left in the pool`,
        );
      }
      assert.ok(isPermanentFailureCode('LIMIT_CHAIN_BYTES'));
    });

    test('item 5: a long chain on a small state filesystem stops at the reserve (LOW_SPACE), never below it', async (t) => {
      const small = smallFilesystem(160);
      const reserve = 64 * MiB;
      const h = host(t, { THINRELAY_RESERVE_BYTES: String(reserve) }, small.stateDir);
      t.after(() => small.release());
      // 2 MiB of random bytes per layer: no reflinks on ext4, so layer k's clone copies k of them.
      const layers = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          packTar([{ name: `data/l${i}.bin`, content: randomBytes(2 * MiB) }]),
        ),
      );
      await s3.putObject(bucket, 'hostile/long-chain.tar', await dockerSaveArchive(layers));
      const [r, lowest] = await lowestFree(small.mnt, () =>
        h.cli('process-image', '--s3-key', 'hostile/long-chain.tar'),
      );
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /\[LOW_SPACE\]/);
      assert.ok(
        lowest >= reserve - 4 * MiB,
        `free space fell to ${lowest} bytes, into the ${reserve}-byte reserve`,
      );
      const inv = hostInventory(h.stateDir);
      assert.deepEqual([inv.mounts, inv.loops, inv.poolFiles], [[], [], []], 'all released');
    });

    /** An xz bomb: a container archive whose first blob is `junkMiB` of zeros (a few KiB compressed). */
    async function xzBomb(junkMiB: number): Promise<Buffer> {
      const layer = await packTar([{ name: 'etc/hostname', content: 'bomb\n' }]);
      return xz(
        await dockerSaveArchive(
          [layer],
          [{ name: `blobs/sha256/${'0'.repeat(64)}`, content: Buffer.alloc(junkMiB * MiB) }],
        ),
      );
    }

    test('item 6: an xz bomb past THINRELAY_MAX_SPOOL_BYTES fails LIMIT_SPOOL_BYTES (permanent), the spool removed', async (t) => {
      const h = host(t, { THINRELAY_MAX_SPOOL_BYTES: '32M' });
      const bomb = await xzBomb(96);
      assert.ok(bomb.length < MiB, `the bomb is small: ${bomb.length} bytes`);
      await s3.putObject(bucket, 'hostile/bomb.tar.xz', bomb);
      const r = await h.cli('process-image', '--s3-key', 'hostile/bomb.tar.xz');
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /\[LIMIT_SPOOL_BYTES\] .*spool limit of 33554432 bytes/);
      assert.doesNotMatch(r.stderr, /VOLUME_SIZE/);
      assert.deepEqual(imageRow(h.stateDir, 'hostile/bomb.tar.xz'), {
        status: 'failed',
        error_code: 'LIMIT_SPOOL_BYTES',
      });
      assert.ok(isPermanentFailureCode('LIMIT_SPOOL_BYTES'));
      const spool = join(h.stateDir, 'spool');
      assert.deepEqual(existsSync(spool) ? readdirSync(spool) : [], [], 'the spool is removed');
    });

    test('item 6: a spool that would eat the reserve stops at it: STATE_FULL (the host), never VOLUME_FULL', async (t) => {
      const small = smallFilesystem(160);
      const reserve = 100 * MiB;
      const h = host(t, { THINRELAY_RESERVE_BYTES: String(reserve) }, small.stateDir);
      t.after(() => small.release());
      await s3.putObject(bucket, 'hostile/bomb-reserve.tar.xz', await xzBomb(96));
      const [r, lowest] = await lowestFree(small.mnt, () =>
        h.cli('process-image', '--s3-key', 'hostile/bomb-reserve.tar.xz'),
      );
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /\[STATE_FULL\] no room to spool the image/);
      assert.doesNotMatch(r.stderr, /VOLUME_FULL|VOLUME_SIZE/);
      assert.ok(
        lowest >= reserve,
        `free space fell to ${lowest}, into the ${reserve}-byte reserve`,
      );
      assert.deepEqual(imageRow(h.stateDir, 'hostile/bomb-reserve.tar.xz'), {
        status: 'failed',
        error_code: 'STATE_FULL',
      });
      const spool = join(h.stateDir, 'spool');
      assert.deepEqual(existsSync(spool) ? readdirSync(spool) : [], [], 'the spool is removed');
    });

    test('item 7: a huge xattr, 70,000 hard links, uid 2^33: permanent image codes, not STORAGE_FAILED', async (t) => {
      const small = smallFilesystem(256);
      t.after(() => small.release());
      const cases: [string, Buffer, string][] = [
        [
          'xattr',
          rawTar(
            paxHeader({ 'SCHILY.xattr.user.big': Buffer.alloc(8000, 0x61) }),
            rawMember({ name: 'f' }, 'x'),
            endOfArchive(),
          ),
          'LIMIT_XATTR_SIZE',
        ],
        [
          'links',
          Buffer.concat([
            rawMember({ name: 'f' }, 'x'),
            ...Array.from({ length: 70_000 }, (_, i) =>
              rawMember({ name: `l${i}`, type: '1', linkname: 'f' }),
            ),
            endOfArchive(),
          ]),
          'LIMIT_LINK_COUNT',
        ],
        [
          'uid',
          rawTar(
            paxHeader({ uid: String(2 ** 33) }),
            rawMember({ name: 'f' }, 'x'),
            endOfArchive(),
          ),
          'ARCHIVE_BAD_OWNER',
        ],
      ];
      for (const [name, tar, code] of cases) {
        const root = join(small.mnt, name);
        mkdirSync(root);
        await assert.rejects(
          unpackArchive(chunked(tar, 1 << 20), {
            root,
            limits: {
              maxUnpackedBytes: 64 * MiB,
              maxEntries: 100_000,
              maxPathLength: 4095,
              maxPathDepth: 256,
            },
          }),
          (err: unknown) => {
            assert.ok(err instanceof ImageError, `${name}: ${String(err)}`);
            assert.equal(err.code, code, `${name}: ${err.message}`);
            assert.equal(classifyFailure(err, never), 'permanent', name);
            return true;
          },
        );
        rmSync(root, { recursive: true, force: true });
      }
    });

    test('item 8: LOW_SPACE past its budget is recorded failed; fleet status says so and fleet wait exits 1', async (t) => {
      const stack = await startLocalStack({ bucket: 'thinrelay-space-budget', maxReceiveCount: 5 });
      t.after(() => stack.stop());
      const small = smallFilesystem(160);
      const env: NodeJS.ProcessEnv = {
        ...stack.env,
        THINRELAY_STATE_DIR: small.stateDir,
        // More than the filesystem has: every image is refused LOW_SPACE at admission.
        THINRELAY_RESERVE_BYTES: '200M',
        THINRELAY_VOLUME_SIZE: '32M',
        THINRELAY_WAIT_SECONDS: '1',
        THINRELAY_HEARTBEAT_SECONDS: '5',
        THINRELAY_SYNC_SECONDS: '600',
        THINRELAY_TRANSIENT_DELAY_MS: '100',
        THINRELAY_SPACE_ATTEMPTS: '3',
      };
      const agent = startAgent(
        ['--group', 'default', '--host-id', 'host-space', '--metrics-addr', '127.0.0.1:0'],
        env,
      );
      t.after(async () => {
        await agent.stop(10_000);
        await runCli(['pool', 'destroy', '--force'], env);
        releaseStateDir(small.stateDir);
        small.release();
      });
      await agent.waitForLog((l) => l.msg === 'sync round done', 60_000);
      await until(
        'the host registered',
        async () => {
          const r = await runCli(['fleet', 'hosts', '--json'], stack.env);
          return (
            r.code === 0 && (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live === 1
          );
        },
        30_000,
      );
      const key = 'images/no-room.tar';
      const put = await stack.s3.send(
        new PutObjectCommand({
          Bucket: stack.bucket,
          Key: key,
          Body: await packTar([{ name: 'etc/hostname', content: 'no room\n' }]),
        }),
      );
      const eTag = put.ETag!.replace(/"/g, '');
      const wait = await runCli(
        ['fleet', 'wait', key, '--etag', eTag, '--timeout', '60s', '--interval', '200ms'],
        stack.env,
      );
      assert.equal(wait.code, 1, `fleet wait: ${wait.stdout}${wait.stderr}`);
      assert.match(wait.stdout + wait.stderr, /LOW_SPACE/);
      const status = await runCli(['fleet', 'status', key, '--json'], stack.env);
      assert.equal(status.code, 0, status.stderr);
      const s = JSON.parse(status.stdout) as {
        counts: { failed: number; pending: number };
        hosts: { state: string; reason: string | null; message: string | null }[];
      };
      assert.equal(s.counts.failed, 1, status.stdout);
      assert.equal(s.hosts[0]!.state, 'failed');
      assert.equal(s.hosts[0]!.reason, 'LOW_SPACE');
      assert.match(s.hosts[0]!.message ?? '', /attempt 3, retry budget 3: recorded failed/);
      // Two attempts retried in process, the third recorded failed: three jobs, no more.
      const jobs = queryState<{ error_code: string }>(
        small.stateDir,
        `SELECT error_code FROM jobs ORDER BY id`,
      ).map((j) => j.error_code);
      assert.deepEqual(jobs, ['LOW_SPACE', 'LOW_SPACE', 'LOW_SPACE']);
      const failed = await agent.waitForLog((l) => l.outcome === 'failed' && l.key === key, 30_000);
      assert.equal(failed.code, 'LOW_SPACE');
    });
  },
);
