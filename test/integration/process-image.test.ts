/**
 * process-image end to end, as an operator runs it: the built CLI as a child
 * process, a real S3 emulator, real loop devices, mkfs and mounts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pack } from 'tar-stream';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { cliPath, okJson as json, runCli, type CliResult } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const bucket = 'thinrelay-images';

interface ProcessJson {
  outcome: string;
  imageId: number;
  devicePath: string;
  snapshotId: number;
  sha256: string;
  jobId: number | null;
}

async function hostileTar(): Promise<Buffer> {
  const p = pack();
  p.entry({ name: 'ok.txt' }, 'fine');
  p.entry({ name: '../../escape.txt' }, 'evil');
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('process-image', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-state-'));
    env = {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
    };
    await s3.putObject(bucket, 'images/sample.tar', await buildSampleRootfs());
    await s3.putObject(
      bucket,
      'images/sample.tar.gz',
      await buildSampleRootfs({ gzip: true, seed: 'gz' }),
    );
    await s3.putObject(bucket, 'images/copy-of-sample.tar', await buildSampleRootfs());
    await s3.putObject(bucket, 'images/hostile.tar', await hostileTar());
    await s3.putObject(
      bucket,
      'images/concurrent.tar',
      await buildSampleRootfs({ seed: 'concurrent', payloadBytes: 16 * 1024 ** 2 }),
    );
  });
  after(async () => {
    releaseStateDir(stateDir);
    await s3.stop();
  });

  test('unpacks, snapshots and activates: the device mounts and holds the image', async () => {
    const r = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    assert.equal(r.outcome, 'complete');
    assert.match(r.devicePath, /^\/dev\/loop\d+$/);
    withMounted(r.devicePath, (root) => {
      assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'thinrelay-sample\n');
      assert.equal(readlinkSync(join(root, 'etc/alternatives-hello')), '/usr/bin/hello');
      assert.equal(statSync(join(root, 'usr/bin/su-helper')).mode & 0o7777, 0o4755);
      assert.equal(
        statSync(join(root, 'usr/bin/hello')).ino,
        statSync(join(root, 'usr/bin/hello-again')).ino,
      );
      assert.equal(statSync(join(root, 'home/app/config.json')).uid, 1000);
    });
    // The operators' check from the README ("The first upload").
    const dev = execFileSync(
      'sqlite3',
      [join(stateDir, 'images.db'), 'SELECT device_path FROM snapshots LIMIT 1'],
      { encoding: 'utf8' },
    ).trim();
    assert.equal(dev, r.devicePath);
  });

  test('a second run is a no-op that reports the same device', async () => {
    const first = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    const again = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    assert.equal(again.outcome, 'already-complete');
    assert.equal(again.devicePath, first.devicePath);
    const plain = await cli('process-image', '--s3-key', 'images/sample.tar');
    assert.equal(plain.code, 0);
    assert.equal(plain.stdout.trim(), first.devicePath);
  });

  test('a ready image whose snapshot was deactivated gets that snapshot attached again, not a new one', async () => {
    await s3.putObject(bucket, 'images/reattach.tar', await buildSampleRootfs({ seed: 'again' }));
    const first = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/reattach.tar', '--json'),
    );
    const deact = json<{ state: string }>(
      await cli('deactivate', String(first.snapshotId), '--json'),
    );
    assert.equal(deact.state, 'inactive');
    const again = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/reattach.tar', '--json'),
    );
    assert.equal(again.outcome, 'already-complete');
    assert.equal(again.snapshotId, first.snapshotId, 'the inactive snapshot, attached again');
    withMounted(again.devicePath, (root) =>
      assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'thinrelay-sample\n'),
    );
    const snapshots = execFileSync(
      'sqlite3',
      [
        join(stateDir, 'images.db'),
        `SELECT count(*) FROM storage_objects WHERE kind = 'snapshot' AND image_id = ${again.imageId}`,
      ],
      { encoding: 'utf8' },
    ).trim();
    assert.equal(snapshots, '1');
  });

  test('--etag of an image already done answers without asking S3; a stale --etag is refused', async () => {
    const done = json<ProcessJson & { etag: string }>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    // An unreachable endpoint proves the fast path never talks to S3.
    const offline = await runCli(
      ['process-image', '--s3-key', 'images/sample.tar', '--etag', done.etag, '--json'],
      {
        ...env,
        AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9',
      },
    );
    assert.equal(offline.code, 0, offline.stderr);
    assert.equal((JSON.parse(offline.stdout) as ProcessJson).devicePath, done.devicePath);
    const stale = await cli(
      'process-image',
      '--s3-key',
      'images/sample.tar',
      '--etag',
      '"0123456789abcdef"',
    );
    assert.equal(stale.code, 1);
    assert.match(stale.stderr, /\[OBJECT_CHANGED\]/);
  });

  test('gzip is detected by content, not by name', async () => {
    const r = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar.gz', '--json'),
    );
    withMounted(r.devicePath, (root) =>
      assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="gz"/),
    );
    const show = json<{ steps: { name: string; detail: { compression?: string } | null }[] }>(
      await cli('show', 'images/sample.tar.gz', '--json'),
    );
    assert.equal(show.steps.find((s) => s.name === 'unpack')?.detail?.compression, 'gzip');
  });

  test('two keys with identical bytes share one volume', async () => {
    const a = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    const b = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/copy-of-sample.tar', '--json'),
    );
    assert.equal(a.sha256, b.sha256);
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      const volumes = store.db
        .prepare(
          `SELECT b.volume_id AS v FROM image_blobs ib JOIN blobs b ON b.id = ib.blob_id WHERE ib.image_id IN (?, ?)`,
        )
        .all(a.imageId, b.imageId) as { v: number }[];
      assert.equal(new Set(volumes.map((x) => x.v)).size, 1);
      const ready = store.db
        .prepare(`SELECT count(*) AS n FROM blobs WHERE sha256 = ? AND status = 'ready'`)
        .get(a.sha256) as { n: number };
      assert.equal(ready.n, 1);
    } finally {
      store.close();
    }
    assert.notEqual(a.devicePath, b.devicePath, 'each image gets its own writable snapshot');
  });

  test('a hostile archive fails the image (exit 1, one line, reason recorded) and releases everything', async () => {
    const before = hostInventory(stateDir);
    const r = await cli('process-image', '--s3-key', 'images/hostile.tar');
    assert.equal(r.code, 1, r.stderr);
    const lastLine = r.stderr.trim().split('\n').pop() ?? '';
    assert.match(
      lastLine,
      /^thinrelay: process-image images\/hostile\.tar: \[ARCHIVE_PATH_ESCAPE\]/,
    );
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.deepEqual(hostInventory(stateDir).loops, before.loops);
    assert.deepEqual(hostInventory(stateDir).mounts, []);
    assert.deepEqual(hostInventory(stateDir).poolFiles, before.poolFiles);
    const failed = json<{ key: string; errorCode: string }[]>(await cli('failed', '--json'));
    assert.deepEqual(
      failed.map((f) => [f.key, f.errorCode]),
      [['images/hostile.tar', 'ARCHIVE_PATH_ESCAPE']],
    );
    const show = json<{
      job: { status: string };
      steps: { name: string; status: string; errorCode: string | null }[];
    }>(await cli('show', 'images/hostile.tar', '--json'));
    assert.equal(show.job.status, 'failed');
    assert.deepEqual(
      show.steps.map((s) => s.status),
      ['complete', 'failed', 'pending', 'pending', 'pending'],
    );
    // And the next image processes normally.
    assert.equal((await cli('process-image', '--s3-key', 'images/sample.tar')).code, 0);
  });

  test('--keep-on-failure keeps the failed volume for inspection; gc releases it', async () => {
    const r = await cli('process-image', '--s3-key', 'images/hostile.tar', '--keep-on-failure');
    assert.equal(r.code, 1);
    const snaps = json<{ state: string }[]>(await cli('snapshots', '--json'));
    assert.ok(snaps.every((s) => s.state === 'active'));
    const store = StateStore.open(stateDir, { readonly: true });
    const kept = store.objects.listByState(['kept']);
    store.close();
    assert.equal(kept.length, 1);
    assert.ok(
      hostInventory(stateDir).poolFiles.includes(`vol-${String(kept[0]!.id).padStart(8, '0')}.img`),
    );
    assert.deepEqual(hostInventory(stateDir).mounts, []);
    const gc = json<{ actions: { object: string; action: string }[] }>(await cli('gc', '--json'));
    assert.ok(
      gc.actions.some(
        (a) => a.action === 'removed' && a.object === `vol-${String(kept[0]!.id).padStart(8, '0')}`,
      ),
    );
    assert.ok(
      !hostInventory(stateDir).poolFiles.includes(
        `vol-${String(kept[0]!.id).padStart(8, '0')}.img`,
      ),
    );
  });

  test('exit codes: usage 2, missing object 1 with its reason, not-found image 4', async () => {
    const usage = await cli('process-image');
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /missing --s3-key/);
    const unknownFlag = await cli('images', '--frobnicate');
    assert.equal(unknownFlag.code, 2);
    const missing = await cli('process-image', '--s3-key', 'images/nope.tar');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /\[OBJECT_NOT_FOUND\]/);
    const noBucket = await runCli(['process-image', '--s3-key', 'x'], {
      ...env,
      THINRELAY_BUCKET: '',
    });
    assert.ok(noBucket.code === 2 || noBucket.code === 1);
    const show = await cli('show', 'no/such/key');
    assert.equal(show.code, 4);
    assert.match(show.stderr, /\[NOT_FOUND\]/);
  });

  test('three concurrent runs of one image: one job, one volume, one unpack', async () => {
    const runs = await Promise.all(
      [1, 2, 3].map(() => cli('process-image', '--s3-key', 'images/concurrent.tar', '--json')),
    );
    const results = runs.map((r) => json<ProcessJson>(r));
    assert.equal(new Set(results.map((r) => r.devicePath)).size, 1);
    assert.equal(results.filter((r) => r.outcome === 'complete').length, 1);
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      const image = store.images.latestByKey('images/concurrent.tar')!;
      const jobs = store.db
        .prepare(`SELECT count(*) AS n FROM jobs WHERE image_id = ?`)
        .get(image.id) as { n: number };
      assert.equal(jobs.n, 1);
      const volumes = store.db
        .prepare(
          `SELECT count(*) AS n FROM storage_objects o JOIN jobs j ON j.id = o.job_id WHERE j.image_id = ? AND o.kind = 'volume'`,
        )
        .get(image.id) as { n: number };
      assert.equal(volumes.n, 1);
      const unpacks = store.jobs
        .steps(store.jobs.latestForImage(image.id)!.id)
        .find((s) => s.name === 'unpack')!;
      assert.equal(unpacks.attempts, 1);
    } finally {
      store.close();
    }
  });

  test('activate, deactivate, remove (refused while active unless --force)', async () => {
    const base = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    const act = json<{ snapshotId: number; devicePath: string }>(
      await cli('activate', String(base.imageId), '--json'),
    );
    assert.notEqual(act.devicePath, base.devicePath);
    withMounted(act.devicePath, (root) =>
      assert.ok(statSync(join(root, 'usr/lib/payload.bin')).size > 0),
    );
    const deact = json<{ state: string }>(
      await cli('deactivate', String(act.snapshotId), '--json'),
    );
    assert.equal(deact.state, 'inactive');
    const refused = await cli('remove', 'images/copy-of-sample.tar');
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /\[IN_USE\]/);
    const removed = json<{ status: string }>(
      await cli('remove', 'images/copy-of-sample.tar', '--force', '--json'),
    );
    assert.equal(removed.status, 'removed');
    // The shared content stays: images/sample.tar still uses it.
    withMounted(base.devicePath, (root) => assert.ok(readFileSync(join(root, 'etc/hostname'))));
  });

  test('Ctrl-C mid-unpack: INTERRUPTED recorded, everything released, a rerun succeeds', async () => {
    await s3.putObject(
      bucket,
      'images/interrupted.tar',
      await buildSampleRootfs({ seed: 'sigint', payloadBytes: 64 * 1024 ** 2 }),
    );
    const before = hostInventory(stateDir);
    const child = spawn(
      process.execPath,
      [cliPath, 'process-image', '--s3-key', 'images/interrupted.tar'],
      {
        env: { ...process.env, ...env, THINRELAY_LOG_LEVEL: 'info' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // Once: a second Ctrl-C means "exit now" (crash recovery then takes over).
      if (!sent && stderr.includes('"msg":"unpacking"')) sent = child.kill('SIGINT');
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 130, stderr);
    assert.match(stderr.trim().split('\n').pop() ?? '', /\[INTERRUPTED\] stopped: received SIGINT/);
    assert.deepEqual(hostInventory(stateDir), before, 'nothing left behind');
    const show = json<{ job: { status: string; errorCode: string } }>(
      await cli('show', 'images/interrupted.tar', '--json'),
    );
    assert.deepEqual([show.job.status, show.job.errorCode], ['failed', 'INTERRUPTED']);
    assert.equal((await cli('process-image', '--s3-key', 'images/interrupted.tar')).code, 0);
  });

  test('doctor passes on this host; state backup writes a copy', async () => {
    const doc = json<{ ok: boolean; checks: { name: string; ok: boolean }[] }>(
      await cli('doctor', '--json'),
    );
    assert.equal(doc.ok, true, JSON.stringify(doc.checks.filter((c) => !c.ok)));
    const file = join(stateDir, 'backup-copy.db');
    assert.equal((await cli('state', 'backup', file)).code, 0);
    const n = execFileSync('sqlite3', [file, 'SELECT count(*) FROM images'], {
      encoding: 'utf8',
    }).trim();
    assert.ok(Number(n) > 0);
  });

  test('nothing is attached or mounted that the database does not list', () => {
    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.mounts, []);
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      const active = store.snapshots
        .list()
        .map((s) => s.device_path)
        .sort();
      assert.deepEqual(inv.loops.map((l) => l.device).sort(), active);
      const live = store.objects
        .listLive()
        .map((o) => `${o.kind === 'volume' ? 'vol' : 'snap'}-${String(o.id).padStart(8, '0')}.img`)
        .sort();
      assert.deepEqual(inv.poolFiles, live);
    } finally {
      store.close();
    }
  });
});
