/**
 * A spool left by kill -9 is reclaimed: process-image is killed while it
 * spools a (slowly downloaded) outer-gzip container archive; the job is then
 * interrupted, not "being processed": gc removes the spool and reports the
 * bytes, and `remove --force` and `pool destroy --force` work.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { StateStore } from '../../host-agent/src/store/index.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { gzip, packTar } from '../helpers/tar-fixtures.js';
import { startThrottleProxy, type ThrottleProxy } from '../helpers/throttle-proxy.js';
import { until } from '../helpers/until.js';

const bucket = 'thinrelay-spool';
const key = 'images/big-oci.tar.gz';
/** The layer: random bytes, so gzip keeps them at full size. */
const layerPayloadBytes = 24 * 1024 ** 2;

/** A one-layer OCI archive, outer-gzipped: spooled whole before its manifest is read. */
async function bigOciArchive(): Promise<Buffer> {
  const layer = await packTar([{ name: 'big.bin', content: randomBytes(layerPayloadBytes) }]);
  return gzip(await ociArchiveOfLayers([layer]));
}

describe('a spool left by kill -9', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let proxy: ThrottleProxy;
  const stateDirs: string[] = [];

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    await s3.putObject(bucket, key, await bigOciArchive());
    // 4 MB/s: the spool grows for seconds, long enough to kill the run mid-way.
    proxy = await startThrottleProxy(s3.port, 4 * 1024 ** 2);
  });
  after(async () => {
    for (const d of stateDirs) releaseStateDir(d);
    await proxy.stop();
    await s3.stop();
  });

  function freshHost(): { stateDir: string; env: NodeJS.ProcessEnv } {
    const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-spool-'));
    stateDirs.push(stateDir);
    return {
      stateDir,
      env: {
        ...s3EnvFor(s3),
        AWS_ENDPOINT_URL_S3: proxy.endpoint,
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BUCKET: bucket,
        THINRELAY_RESERVE_BYTES: '0',
      },
    };
  }

  /** Starts process-image and kills it (-9) once its spool holds a few MB; the spool's path. */
  async function killWhileSpooling(stateDir: string, env: NodeJS.ProcessEnv): Promise<string> {
    const child = spawn(process.execPath, [cliPath, 'process-image', '--s3-key', key], {
      env: { ...process.env, ...env },
      stdio: 'ignore',
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on('exit', (_code, signal) => resolve(signal)),
    );
    try {
      const spool = await until(
        'a spool of a few MB',
        () => {
          const root = join(stateDir, 'spool');
          if (child.exitCode !== null) throw new Error(`process-image exited ${child.exitCode}`);
          for (const job of existsSync(root) ? ['job-1', 'job-2', 'job-3'] : []) {
            const archive = join(root, job, 'archive.tar');
            if (existsSync(archive) && statSync(archive).size > 4 * 1024 ** 2)
              return Promise.resolve(join(root, job));
          }
          return Promise.resolve(undefined);
        },
        30_000,
        50,
      );
      child.kill('SIGKILL');
      assert.equal(await exited, 'SIGKILL');
      return spool;
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }

  const imageStatus = (stateDir: string): string | undefined => {
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      return store.images.list({ includeRemoved: true }).find((i) => i.key === key)?.status;
    } finally {
      store.close();
    }
  };

  test('gc reclaims it and reports the bytes', async () => {
    const { stateDir, env } = freshHost();
    const spool = await killWhileSpooling(stateDir, env);
    assert.ok(existsSync(spool));
    const gc = await runCli(['gc', '--json'], env);
    assert.equal(gc.code, 0, gc.stderr);
    const { actions } = JSON.parse(gc.stdout) as {
      actions: { object: string; action: string; reason: string; freedBytes?: number }[];
    };
    const reclaimed = actions.find((a) => a.object === spool);
    assert.ok(reclaimed !== undefined, `gc reported the spool: ${gc.stdout}`);
    assert.equal(reclaimed.action, 'removed');
    assert.match(reclaimed.reason, /interrupted/);
    assert.ok((reclaimed.freedBytes ?? 0) > 4 * 1024 ** 2, `bytes freed: ${reclaimed.freedBytes}`);
    assert.equal(existsSync(spool), false, 'the spool is gone');

    // The job was handed back: a new run takes it over and finishes the image.
    proxy.setBytesPerSecond(1024 ** 3);
    try {
      const resumed = await runCli(['process-image', '--s3-key', key], env);
      assert.equal(resumed.code, 0, resumed.stderr);
    } finally {
      proxy.setBytesPerSecond(4 * 1024 ** 2);
    }
    assert.equal(imageStatus(stateDir), 'ready');
    assert.equal(existsSync(join(stateDir, 'spool', 'job-1')), false);
  });

  test('remove --force removes the interrupted image and its spool', async () => {
    const { stateDir, env } = freshHost();
    const spool = await killWhileSpooling(stateDir, env);
    const removed = await runCli(['remove', '--force', key], env);
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal(imageStatus(stateDir), 'removed');
    assert.equal(existsSync(spool), false, 'the spool is gone');
    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.loops, []);
    assert.deepEqual(inv.mounts, []);
  });

  test('pool destroy --force works after a kill -9 while spooling', async () => {
    const { stateDir, env } = freshHost();
    const spool = await killWhileSpooling(stateDir, env);
    const destroyed = await runCli(['pool', 'destroy', '--force'], env);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    assert.equal(existsSync(spool), false, 'the spool is gone');
    assert.equal(existsSync(join(stateDir, 'pool')), false, 'the pool is destroyed');
    assert.deepEqual(hostInventory(stateDir).loops, []);
  });
});
