/**
 * Faults beyond kill -9 (issue 14), each with real parts: a database write
 * lock held by another process, a state filesystem that fills mid-unpack,
 * a restored `state backup`, S3 answering 403 AccessDenied, two agents on
 * one state dir, a corrupt or read-only database, hostile text in keys.
 * The agent and the CLI run as child processes against s3rver,
 * local-aws-sqs, real loop devices, mkfs and mounts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { loadConfig } from '../../host-agent/src/config.js';
import { NotFoundError } from '../../host-agent/src/errors.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { activateImage, removeImage } from '../../host-agent/src/ops/image-ops.js';
import { openRuntime } from '../../host-agent/src/runtime.js';
import { dbFileName } from '../../host-agent/src/store/db.js';
import { serializeImageEvent, type ImageEvent } from '../../schema/image-event.js';
import { putImageEvent, sequencerCounter } from '../helpers/image-events.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { queryState, smallFilesystem } from '../helpers/small-fs.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { sqsEnvFor, startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';
import { gzip, packTar, smallRootfsTar } from '../helpers/tar-fixtures.js';
import { startThrottleProxy } from '../helpers/throttle-proxy.js';

const bucket = 'thinrelay-faults';
const nextSequencer = sequencerCounter(0x2000);

const putEvent = (key: string, eTag: string, sequencer = nextSequencer()): ImageEvent =>
  putImageEvent(bucket, key, eTag, sequencer);

const smallTar = smallRootfsTar;

async function metricsOf(agent: AgentProcess): Promise<string> {
  const line = await agent.waitForLog((l) => l.msg === 'health and metrics endpoint');
  return (await fetch(`${String(line.url)}/metrics`)).text();
}

function metric(text: string, name: string, labels = ''): number {
  const re = new RegExp(`^${name}${labels.replace(/[{}]/g, '\\$&')}\\s+(\\d+(?:\\.\\d+)?)$`, 'm');
  return Number(re.exec(text)?.[1] ?? 'NaN');
}

/** Take every free block of the filesystem of `dir` (a file that stays until removed). */
function fillUp(dir: string): string {
  const filler = join(dir, 'filler');
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { stdio: 'ignore' });
  } catch {
    // dd stops at ENOSPC having taken what it could: that is the point.
  }
  return filler;
}

describe('faults (issue 14)', { skip: needsRoot, timeout: 600_000 }, () => {
  let s3: S3Emulator;
  let sqs: SqsEmulator;
  let hostSeq = 0;

  before(async () => {
    [s3, sqs] = await Promise.all([startS3Emulator(), startSqsEmulator()]);
    await s3.createBucket(bucket);
  });
  after(async () => {
    await Promise.all([s3?.stop(), sqs?.stop()]);
  });

  interface Host {
    stateDir: string;
    env: NodeJS.ProcessEnv;
    queueUrl: string;
    dlqUrl: string;
  }

  async function newHost(
    t: TestContext,
    opts: { stateDir?: string; env?: NodeJS.ProcessEnv; maxReceiveCount?: number } = {},
  ): Promise<Host> {
    const n = ++hostSeq;
    const stateDir = opts.stateDir ?? mkdtempSync(join(tmpdir(), `thinrelay-faults-${n}-`));
    const q = await sqs.createQueue(`tr-faults-h${n}`, {
      dlq: { name: `tr-faults-dlq-h${n}`, maxReceiveCount: opts.maxReceiveCount ?? 100 },
    });
    const env: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      ...sqsEnvFor(sqs),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_VOLUME_SIZE: '96M',
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_TRANSIENT_DELAY_MS: '100',
      ...opts.env,
    };
    t.after(async () => {
      await runCli(['pool', 'destroy', '--force'], env);
      if (opts.stateDir === undefined) releaseStateDir(stateDir);
    });
    return { stateDir, env, queueUrl: q.url, dlqUrl: q.dlqUrl! };
  }

  function agentFor(t: TestContext, host: Host, env: NodeJS.ProcessEnv = {}): AgentProcess {
    const agent = startAgent(['--queue-url', host.queueUrl, '--metrics-addr', '127.0.0.1:0'], {
      ...host.env,
      ...env,
    });
    t.after(() => agent.kill('SIGKILL'));
    return agent;
  }

  test('a database write lock held during an unpack: the agent recovers its own work', async (t) => {
    const proxy = await startThrottleProxy(s3.port, 1024 * 1024);
    t.after(() => proxy.stop());
    const host = await newHost(t, {
      env: { AWS_ENDPOINT_URL_S3: proxy.endpoint, THINRELAY_DB_BUSY_MS: '300' },
    });
    const key = 'images/locked.tar';
    const body = await packTar([{ name: 'data/blob.bin', content: randomBytes(3 * 1024 * 1024) }]);
    const { eTag } = await s3.putObject(bucket, key, body);
    const event = putEvent(key, eTag);
    await sqs.send(host.queueUrl, serializeImageEvent(event));
    const agent = agentFor(t, host, { THINRELAY_TRANSIENT_ATTEMPTS: '2' });

    await agent.waitForLog((l) => l.msg === 'unpacking');
    // `sqlite3 images.db` with BEGIN IMMEDIATE, from another process's connection.
    const holder = new Database(join(host.stateDir, dbFileName), { timeout: 5000 });
    holder.exec('BEGIN IMMEDIATE');
    try {
      await agent.waitForLog((l) => /could not record the failure/.test(l.msg), 60_000);
      await agent.waitForLog((l) => /could not record the outcome/.test(l.msg), 60_000);
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
    // Without a restart, the agent releases what its ended worker left.
    await agent.waitForLog(
      (l) =>
        l.msg === 'reconcile' && l.action === 'removed' && /interrupted/.test(String(l.reason)),
      30_000,
    );
    assert.deepEqual(hostInventory(host.stateDir).mounts, [], 'the volume is unmounted');
    assert.equal(metric(await metricsOf(agent), 'thinrelay_images_in_flight'), 0);

    // The same event again: taken over, never waited on as "another process".
    await sqs.send(host.queueUrl, serializeImageEvent(event));
    await agent.waitForLog((l) => l.outcome === 'applied', 60_000);
    assert.equal(
      agent.logs.some((l) => /another process is working on this image/.test(l.msg)),
      false,
    );
    const [image] = queryState<{ status: string }>(host.stateDir, `SELECT status FROM images`);
    assert.equal(image?.status, 'ready');
    const open = queryState(
      host.stateDir,
      `SELECT id FROM jobs WHERE status NOT IN ('complete', 'failed')`,
    );
    assert.deepEqual(open, []);
    assert.equal((await agent.stop()).code, 0);
    const inv = hostInventory(host.stateDir);
    assert.equal(inv.mounts.length, 0);
    assert.equal(inv.loops.length, 1, "only the image's active snapshot stays attached");
  });

  test('a state filesystem that fills mid-unpack: a coded failure, space released, then a small image succeeds (CLI)', async (t) => {
    const fs = smallFilesystem(160);
    const host = await newHost(t, {
      stateDir: fs.stateDir,
      env: { THINRELAY_VOLUME_SIZE: '512M' },
    });
    t.after(() => fs.release());
    const { stateDir } = host;
    const big = gzip(
      await packTar([{ name: 'data/zeros.bin', content: Buffer.alloc(300 * 1024 * 1024) }]),
    );
    await s3.putObject(bucket, 'images/too-big.tar.gz', big);
    await s3.putObject(bucket, 'images/small.tar', await smallTar('small'));

    const r = await runCli(['process-image', '--s3-key', 'images/too-big.tar.gz'], host.env);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /\[STATE_FULL\]/);
    assert.doesNotMatch(r.stderr, /unexpected/);
    const [failed] = queryState<{ status: string; error_code: string }>(
      stateDir,
      `SELECT status, error_code FROM images WHERE key = ?`,
      'images/too-big.tar.gz',
    );
    assert.deepEqual(failed, { status: 'failed', error_code: 'STATE_FULL' });
    const inv = hostInventory(stateDir);
    assert.deepEqual([inv.mounts, inv.loops], [[], []], 'nothing left mounted or attached');
    assert.deepEqual(inv.poolFiles, [], 'the failed volume is deleted');

    const ok = await runCli(['process-image', '--s3-key', 'images/small.tar'], host.env);
    assert.equal(ok.code, 0, ok.stderr);
    // The disk full to the last block: remove and gc still free space.
    fillUp(stateDir);
    const rm = await runCli(['remove', '--force', 'images/small.tar'], host.env);
    assert.equal(rm.code, 0, rm.stderr);
    const gc = await runCli(['gc'], host.env);
    assert.equal(gc.code, 0, gc.stderr);
    assert.deepEqual(hostInventory(stateDir).poolFiles, []);
  });

  test('a state filesystem that fills under the agent: retried, not DLQ; later images succeed; /healthz degraded when full', async (t) => {
    const fs = smallFilesystem(160);
    const host = await newHost(t, {
      stateDir: fs.stateDir,
      maxReceiveCount: 2,
      env: { THINRELAY_VOLUME_SIZE: '512M' },
    });
    t.after(() => fs.release());
    const big = gzip(
      await packTar([{ name: 'data/zeros.bin', content: Buffer.alloc(300 * 1024 * 1024) }]),
    );
    const bigPut = await s3.putObject(bucket, 'images/agent-too-big.tar.gz', big);
    const smallPut = await s3.putObject(bucket, 'images/agent-small.tar', await smallTar('s'));
    const { stateDir } = host;
    const agent = agentFor(t, host, { THINRELAY_TRANSIENT_ATTEMPTS: '1' });
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putEvent('images/agent-too-big.tar.gz', bigPut.eTag)),
    );
    const first = await agent.waitForLog((l) => typeof l.outcome === 'string', 120_000);
    assert.equal(first.outcome, 'retrying');
    assert.equal(first.code, 'STATE_FULL');
    let inv = hostInventory(stateDir);
    assert.deepEqual([inv.mounts, inv.loops, inv.poolFiles], [[], [], []]);

    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putEvent('images/agent-small.tar', smallPut.eTag)),
    );
    const done = await agent.waitForLog(
      (l) => l.outcome === 'applied' && l.key === 'images/agent-small.tar',
      60_000,
    );
    assert.equal(done.outcome, 'applied');
    assert.deepEqual(await sqs.depth(host.dlqUrl), { visible: 0, inFlight: 0 });

    const url = String(
      (await agent.waitForLog((l) => l.msg === 'health and metrics endpoint')).url,
    );
    assert.equal((await fetch(`${url}/healthz`)).status, 200);
    const filler = fillUp(stateDir);
    const degraded = await fetch(`${url}/healthz`);
    assert.equal(degraded.status, 503);
    assert.equal(((await degraded.json()) as { status: string }).status, 'degraded');
    // The unit's ExecStartPre (doctor) warns about space but lets the agent start and reconcile.
    const doctor = await runCli(['doctor'], { ...host.env, THINRELAY_RESERVE_BYTES: '1G' });
    assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
    assert.match(doctor.stdout, /free space\s+WARN/);
    rmSync(filler, { force: true });
    inv = hostInventory(stateDir);
    assert.equal(inv.mounts.length, 0);
    // The pre-start check of the unit must not keep the agent from its reconcile.
    assert.equal((await agent.stop()).code, 0);
  });

  test('a restored backup: gc leaves a newer mounted device alone and new ids stay unique', async (t) => {
    const host = await newHost(t);
    await s3.putObject(bucket, 'images/before.tar', await smallTar('before'));
    await s3.putObject(bucket, 'images/after.tar', await smallTar('after'));
    assert.equal(
      (await runCli(['process-image', '--s3-key', 'images/before.tar'], host.env)).code,
      0,
    );
    const backup = join(host.stateDir, '..', `backup-${hostSeq}.db`);
    t.after(() => rmSync(backup, { force: true }));
    assert.equal((await runCli(['state', 'backup', backup], host.env)).code, 0);

    const after = await runCli(
      ['process-image', '--s3-key', 'images/after.tar', '--json'],
      host.env,
    );
    assert.equal(after.code, 0, after.stderr);
    const { devicePath } = JSON.parse(after.stdout) as { devicePath: string };
    const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-user-mount-'));
    execFileSync('mount', ['-o', 'ro', devicePath, mnt]);
    t.after(() => {
      execFileSync('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    });
    const namesBefore = hostInventory(host.stateDir).poolFiles;

    // docs/operating-a-host.md's restore: images.db* moved aside, the backup copied in, gc.
    execFileSync('sh', ['-c', 'mkdir -p broken && mv images.db* broken/'], { cwd: host.stateDir });
    copyFileSync(backup, join(host.stateDir, dbFileName));
    const gc = await runCli(['gc', '--json'], host.env);
    assert.equal(gc.code, 0, gc.stderr);
    const { actions } = JSON.parse(gc.stdout) as { actions: { object: string; action: string }[] };
    assert.ok(
      actions.some((a) => a.action === 'left in use'),
      JSON.stringify(actions),
    );
    assert.ok(
      actions.some((a) => a.action === 'reserved ids'),
      JSON.stringify(actions),
    );
    const losetup = execFileSync('losetup', ['--list', '--noheadings', '-O', 'NAME,BACK-FILE'], {
      encoding: 'utf8',
    });
    const line = losetup.split('\n').find((l) => l.startsWith(devicePath + ' '));
    assert.ok(line !== undefined, 'the mounted device is still attached');
    assert.doesNotMatch(line, /\(deleted\)/, 'its file is not deleted');
    assert.equal(execFileSync('cat', [join(mnt, 'etc/hostname')], { encoding: 'utf8' }), 'after\n');

    // New objects get new names: none of the ones the pool already holds.
    const again = await runCli(['process-image', '--s3-key', 'images/after.tar'], host.env);
    assert.equal(again.code, 0, again.stderr);
    const namesAfter = hostInventory(host.stateDir).poolFiles;
    const created = namesAfter.filter((n) => !namesBefore.includes(n));
    assert.ok(created.length >= 2, `new volume and snapshot: ${namesAfter.join(' ')}`);
    const highestBefore = Math.max(...namesBefore.map((n) => Number(/(\d+)/.exec(n)![1])));
    for (const n of created) assert.ok(Number(/(\d+)/.exec(n)![1]) > highestBefore, n);
  });

  test('S3 AccessDenied: a failure of its own code on the DLQ path, counted, never superseded', async (t) => {
    // A stub S3 that refuses everything as S3 does for a missing grant.
    const denied: Server = createServer((req, res) => {
      const body =
        req.method === 'HEAD'
          ? ''
          : '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>R</RequestId></Error>';
      res.writeHead(403, { 'content-type': 'application/xml', 'x-amz-request-id': 'R' }).end(body);
    });
    await new Promise<void>((resolve) => denied.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => denied.close(() => resolve())));
    const endpoint = `http://127.0.0.1:${(denied.address() as AddressInfo).port}`;
    const host = await newHost(t, {
      maxReceiveCount: 2,
      env: { AWS_ENDPOINT_URL_S3: endpoint },
    });
    const key = 'images/forbidden.tar';

    const cli = await runCli(['process-image', '--s3-key', key], host.env);
    assert.equal(cli.code, 1, cli.stderr);
    assert.match(cli.stderr, /\[ACCESS_DENIED\]/);
    assert.match(
      cli.stderr,
      /s3:GetObject on arn:aws:s3:::thinrelay-faults\/images\/forbidden\.tar/,
    );

    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putEvent(key, '"0123456789abcdef0123456789abcdef"')),
    );
    const agent = agentFor(t, host);
    const first = await agent.waitForLog((l) => typeof l.outcome === 'string', 60_000);
    assert.equal(first.outcome, 'failed');
    assert.equal(first.code, 'ACCESS_DENIED');
    assert.equal(
      metric(
        await metricsOf(agent),
        'thinrelay_images_failed_total',
        '{reason="ACCESS_DENIED",permanent="true"}',
      ),
      1,
    );
    // Handed back, not deleted: the redrive policy moves it to the DLQ.
    const deadline = Date.now() + 60_000;
    while ((await sqs.depth(host.dlqUrl)).visible === 0 && Date.now() < deadline) await sleep(300);
    assert.equal((await sqs.depth(host.dlqUrl)).visible, 1, 'the message reached the DLQ');
    const [msg] = queryState<{ outcome: string; reason_code: string }>(
      host.stateDir,
      `SELECT outcome, reason_code FROM queue_messages`,
    );
    assert.deepEqual(msg, { outcome: 'failed', reason_code: 'ACCESS_DENIED' });
    // No image row exists (the HEAD was refused), yet `failed` shows it.
    const listed = await runCli(['failed', '--json'], host.env);
    assert.equal(listed.code, 0, listed.stderr);
    const rows = JSON.parse(listed.stdout) as { key: string; errorCode: string }[];
    assert.deepEqual(
      rows.map((r) => [r.key, r.errorCode]),
      [[key, 'ACCESS_DENIED']],
    );
    assert.equal(
      agent.outcomes().some((l) => l.outcome === 'superseded'),
      false,
    );
    await agent.stop();
  });

  test('a second agent on one state dir is refused (exit 3); CLI commands keep working', async (t) => {
    const host = await newHost(t);
    const first = agentFor(t, host);
    await first.waitForLog((l) => l.msg === 'agent started');
    const second = agentFor(t, host);
    const exit = await Promise.race([second.exited, sleep(30_000, { code: 'still running' })]);
    assert.equal(exit.code, 3);
    const refusal = second.logs.map((l) => l.msg).join('\n');
    assert.match(refusal, /\[AGENT_RUNNING\] another thinrelay agent \(pid \d+\) is running/);

    const { eTag } = await s3.putObject(bucket, 'images/beside.tar', await smallTar('beside'));
    const cli = await runCli(
      ['process-image', '--s3-key', 'images/beside.tar', '--etag', eTag],
      host.env,
    );
    assert.equal(cli.code, 0, cli.stderr);
    assert.equal((await runCli(['images'], host.env)).code, 0);
    assert.equal((await first.stop()).code, 0);
    // Released on exit: the next agent starts.
    const third = agentFor(t, host);
    await third.waitForLog((l) => l.msg === 'agent started');
    await third.stop();
  });

  test('a corrupt or read-only database: exit 3 with the fix, never "(unexpected)"', async (t) => {
    const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-baddb-'));
    t.after(() => releaseStateDir(stateDir));
    const env = { THINRELAY_STATE_DIR: stateDir };
    // gc creates the database (read-only commands never do).
    assert.equal((await runCli(['gc'], env)).code, 0);

    writeFileSync(join(stateDir, dbFileName), randomBytes(64 * 1024));
    for (const f of ['images.db-wal', 'images.db-shm']) rmSync(join(stateDir, f), { force: true });
    for (const args of [
      ['images'],
      ['gc'],
      ['process-image', '--bucket', bucket, '--s3-key', 'x.tar'],
    ]) {
      const r = await runCli(args, env);
      assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /\[DB_CORRUPT\]/);
      assert.match(r.stderr, /state backup/);
      assert.doesNotMatch(r.stderr, /unexpected/);
    }
    const doctor = await runCli(['doctor', '--json'], env);
    const dbCheck = (
      JSON.parse(doctor.stdout) as { checks: { name: string; ok: boolean; hint: string }[] }
    ).checks.find((c) => c.name === 'state database')!;
    assert.equal(dbCheck.ok, false);
    assert.match(dbCheck.hint, /Restoring the state database/);

    // Read-only: the state dir's filesystem mounted read-only (root ignores file modes).
    rmSync(join(stateDir, dbFileName));
    assert.equal((await runCli(['gc'], env)).code, 0);
    execFileSync('mount', ['--bind', stateDir, stateDir]);
    try {
      execFileSync('mount', ['-o', 'remount,bind,ro', stateDir]);
      const ro = await runCli(['gc'], env);
      assert.equal(ro.code, 3, ro.stderr);
      assert.match(ro.stderr, /\[DB_READONLY\]/);
      assert.match(ro.stderr, /read-write/);
    } finally {
      execFileSync('umount', [stateDir]);
    }
  });

  test('`remove --force` while `activate` copies: a coded NOT_FOUND, not a raw ENOENT', async (t) => {
    const host = await newHost(t);
    await s3.putObject(bucket, 'images/raced.tar', await smallTar('raced'));
    assert.equal(
      (await runCli(['process-image', '--s3-key', 'images/raced.tar'], host.env)).code,
      0,
    );
    const rt = openRuntime({
      config: loadConfig({ stateDir: host.stateDir }, host.env),
      logger: silentLogger,
    });
    t.after(() => rt.close());
    // The race, made certain: the removal lands between activate's intent and its copy.
    const backend = rt.objects.backend;
    const copy = backend.createSnapshot.bind(backend);
    backend.createSnapshot = async (spec) => {
      await removeImage(rt, 'images/raced.tar', { force: true });
      return copy(spec);
    };
    await assert.rejects(activateImage(rt, 'images/raced.tar'), (err: unknown) => {
      assert.ok(err instanceof NotFoundError, String(err));
      assert.equal(err.code, 'NOT_FOUND');
      assert.match(err.message, /was removed while snapshot \d+ was being created/);
      return true;
    });
    const inv = hostInventory(host.stateDir);
    assert.deepEqual([inv.mounts, inv.loops, inv.poolFiles], [[], [], []]);
  });

  test('terminal escapes in keys are shown escaped; long keys are cut in the log', async (t) => {
    const host = await newHost(t);
    const evil = 'images/\u001b[2J\u001b]0;owned\u0007.tar';
    await s3.putObject(bucket, evil, await smallTar('evil'));
    const r = await runCli(['process-image', '--s3-key', evil], host.env);
    assert.equal(r.code, 0, r.stderr);
    const listing = await runCli(['images'], host.env);
    assert.equal(listing.stdout.includes('\u001b'), false, 'no raw escape reaches the terminal');
    assert.match(listing.stdout, /images\/\\x1b\[2J\\x1b\]0;owned\\x07\.tar/);

    // An event with a 250 KB key: each log line carries it cut, with its length.
    const long = 'k/' + 'a'.repeat(250 * 1024);
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putEvent(long, '"00000000000000000000000000000000"')),
    );
    // A queue URL whose host differs from AWS_ENDPOINT_URL_SQS: the SDK warns on every request.
    const agent = agentFor(t, host, {
      AWS_ENDPOINT_URL_SQS: String(sqsEnvFor(sqs).AWS_ENDPOINT_URL_SQS).replace(
        '127.0.0.1',
        'localhost',
      ),
    });
    await agent.waitForLog((l) => typeof l.outcome === 'string', 60_000);
    await agent.stop();
    assert.ok(agent.logs.some((l) => l.msg === 'AWS SDK warn' && /differs/.test(String(l.detail))));
    const widest = Math.max(...agent.logs.map((l) => JSON.stringify(l).length));
    assert.ok(widest < 8 * 1024, `longest log line ${widest} chars`);
    assert.ok(
      agent.logs.some((l) => Object.values(l).some((v) => /…\(256002 chars\)$/.test(String(v)))),
    );
    assert.deepEqual(
      agent.logs.filter((l) => l.level === 'raw'),
      [],
      'only JSON lines',
    );
  });
});
