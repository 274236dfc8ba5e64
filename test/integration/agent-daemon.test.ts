/**
 * The agent daemon as systemd runs it (the built CLI, a child process)
 * against real emulators: SQS (local-aws-sqs) with redrive policies and move
 * tasks, S3 (s3rver), and real loop devices, mkfs and mounts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import {
  GetQueueAttributesCommand,
  ListMessageMoveTasksCommand,
  StartMessageMoveTaskCommand,
} from '@aws-sdk/client-sqs';
import { dbFileName } from '../../host-agent/src/store/db.js';
import { serializeImageEvent, type ImageEvent } from '../../schema/image-event.js';
import { putImageEvent, sequencerCounter } from '../helpers/image-events.js';
import { startAgent, type AgentProcess, type LogLine } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { sqsEnvFor, startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';
import { packTar, smallRootfsTar } from '../helpers/tar-fixtures.js';
import { startThrottleProxy } from '../helpers/throttle-proxy.js';

const bucket = 'thinrelay-images';
const nextSequencer = sequencerCounter(0x1000);

const putEvent = (key: string, eTag: string, sequencer = nextSequencer()): ImageEvent =>
  putImageEvent(bucket, key, eTag, sequencer);

const smallTar = smallRootfsTar;

/** Incompressible content: a download that takes bytes/rate seconds behind the throttle. */
const bigTar = (bytes: number): Promise<Buffer> =>
  packTar([{ name: 'data/blob.bin', content: randomBytes(bytes) }]);

const hostileTar = (): Promise<Buffer> =>
  packTar([
    { name: 'ok.txt', content: 'fine' },
    { name: '../../escape.txt', content: 'evil' },
  ]);

interface Host {
  stateDir: string;
  env: NodeJS.ProcessEnv;
  queueUrl: string;
  dlqUrl: string;
}

function countRows(stateDir: string, sql: string, ...params: unknown[]): number {
  const db = new Database(join(stateDir, dbFileName), { readonly: true, fileMustExist: true });
  try {
    return (
      (db
        .prepare(sql)
        .pluck()
        .get(...params) as number | undefined) ?? 0
    );
  } finally {
    db.close();
  }
}

describe('thinrelay agent', { skip: needsRoot, timeout: 300_000 }, () => {
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

  /** A host: state dir, queue + DLQ; everything released after the test, even on failure. */
  async function newHost(
    t: TestContext,
    opts: { maxReceiveCount?: number; s3Endpoint?: string; env?: NodeJS.ProcessEnv } = {},
  ): Promise<Host> {
    const n = ++hostSeq;
    const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-agent-${n}-`));
    const q = await sqs.createQueue(`tr-host-default-h${n}`, {
      dlq: { name: `tr-dlq-default-h${n}`, maxReceiveCount: opts.maxReceiveCount ?? 100 },
    });
    const env: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      ...(opts.s3Endpoint ? { AWS_ENDPOINT_URL_S3: opts.s3Endpoint } : {}),
      ...sqsEnvFor(sqs),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_VOLUME_SIZE: '96M',
      // local-aws-sqs waits out the whole long poll even when messages are
      // queued; a short poll keeps tests fast (production: 20 s).
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_TRANSIENT_DELAY_MS: '100',
      ...opts.env,
    };
    t.after(async () => {
      // Active snapshots are the agent's product and outlive it by design: release them.
      await runCli(['pool', 'destroy', '--force'], env);
      releaseStateDir(stateDir);
    });
    return { stateDir, env, queueUrl: q.url, dlqUrl: q.dlqUrl! };
  }

  function agentFor(
    t: TestContext,
    host: Host,
    extra: string[] = [],
    env: NodeJS.ProcessEnv = {},
  ): AgentProcess {
    const agent = startAgent(
      ['--queue-url', host.queueUrl, '--metrics-addr', '127.0.0.1:0', ...extra],
      { ...host.env, ...env },
    );
    t.after(() => agent.kill('SIGKILL'));
    return agent;
  }

  const outcomeOf = (l: LogLine): unknown => l.outcome;

  test('one event delivered three times unpacks once; a stale sequencer is dropped', async (t) => {
    const host = await newHost(t);
    const key = 'images/dup.tar';
    const { eTag } = await s3.putObject(bucket, key, await smallTar('dup'));
    const event = putEvent(key, eTag);
    const body = serializeImageEvent(event);
    for (let i = 0; i < 3; i++) await sqs.send(host.queueUrl, body);

    const agent = agentFor(t, host, ['--concurrency', '3']);
    await agent.waitForLog(() => agent.outcomes().length >= 3);
    const outcomes = agent.outcomes().map(outcomeOf).sort();
    assert.deepEqual(outcomes, ['applied', 'stale', 'stale']);
    const jobs = countRows(host.stateDir, `SELECT COUNT(*) FROM jobs`);
    const unpacks = countRows(
      host.stateDir,
      `SELECT COUNT(*) FROM job_steps WHERE name = 'unpack' AND status = 'complete'`,
    );
    assert.equal(jobs, 1, 'one job');
    assert.equal(unpacks, 1, 'one unpack');
    // Every line of the image's work names its message and key; once known, its image and job.
    const work = agent.logs.filter((l) => l.messageId !== undefined);
    assert.ok(work.length >= 6, JSON.stringify(agent.logs));
    for (const l of work) assert.equal(l.key, key, JSON.stringify(l));
    const stepLines = agent.logs.filter((l) => l.msg === 'step done' || l.msg === 'unpacking');
    assert.ok(stepLines.length >= 5, JSON.stringify(agent.logs));
    for (const l of stepLines) {
      assert.equal(typeof l.messageId, 'string', JSON.stringify(l));
      assert.equal(typeof l.image, 'number', JSON.stringify(l));
      assert.equal(typeof l.job, 'number', JSON.stringify(l));
    }
    const outcomeLines = agent.logs.filter((l) => l.msg === 'image event handled');
    assert.ok(outcomeLines.every((l) => typeof l.messageId === 'string'));

    // An older event for the key (an overwrite notification that arrived late).
    const older = putEvent(key, '"0123456789abcdef0123456789abcdef"', '0000000000000100');
    await sqs.send(host.queueUrl, serializeImageEvent(older));
    await agent.waitForLog(() => agent.outcomes().length >= 4);
    assert.equal(agent.outcomes()[3]!.outcome, 'stale');
    assert.equal(countRows(host.stateDir, `SELECT COUNT(*) FROM jobs`), 1, 'no new job');

    // Every message was deleted after its outcome was recorded.
    await sleep(300);
    assert.deepEqual(await sqs.depth(host.queueUrl), { visible: 0, inFlight: 0 });
    assert.deepEqual(await sqs.depth(host.dlqUrl), { visible: 0, inFlight: 0 });
    const exit = await agent.stop();
    assert.equal(exit.code, 0);
  });

  test('the heartbeat keeps a slow image invisible past its visibility timeout', async (t) => {
    const proxy = await startThrottleProxy(s3.port, 1024 * 1024);
    t.after(() => proxy.stop());
    const host = await newHost(t, { s3Endpoint: proxy.endpoint });
    const key = 'images/slow.tar';
    const { eTag } = await s3.putObject(bucket, key, await bigTar(6 * 1024 * 1024));
    await sqs.send(host.queueUrl, serializeImageEvent(putEvent(key, eTag)));

    const agent = agentFor(t, host, [], { THINRELAY_VISIBILITY_TIMEOUT: '2' });
    await agent.waitForLog((l) => l.msg === 'unpacking');
    // Well past the 2 s timeout: without heartbeats the message would be visible again.
    const deadline = Date.now() + 4500;
    while (Date.now() < deadline) {
      assert.deepEqual(await sqs.receiveNow(host.queueUrl), [], 'message became visible mid-image');
      await sleep(500);
    }
    const done = await agent.waitForLog((l) => outcomeOf(l) !== undefined, 60_000);
    assert.equal(done.outcome, 'applied');
    assert.equal(countRows(host.stateDir, `SELECT COUNT(*) FROM jobs`), 1);
    await sleep(300);
    assert.deepEqual(await sqs.depth(host.queueUrl), { visible: 0, inFlight: 0 });
    assert.equal((await agent.stop()).code, 0);
  });

  test('SIGTERM mid-image releases the message; a restarted agent completes it', async (t) => {
    const proxy = await startThrottleProxy(s3.port, 512 * 1024);
    t.after(() => proxy.stop());
    const host = await newHost(t, {
      s3Endpoint: proxy.endpoint,
      env: { THINRELAY_DRAIN_SECONDS: '1' },
    });
    const key = 'images/interrupted.tar';
    const { eTag } = await s3.putObject(bucket, key, await bigTar(8 * 1024 * 1024));
    await sqs.send(host.queueUrl, serializeImageEvent(putEvent(key, eTag)));

    const first = agentFor(t, host);
    await first.waitForLog((l) => l.msg === 'unpacking');
    const stoppedAt = Date.now();
    const exit = await first.stop();
    assert.equal(exit.code, 0, 'a drained shutdown exits 0');
    assert.ok(Date.now() - stoppedAt < 15_000, 'the drain deadline was kept');
    assert.equal(first.outcomes()[0]?.outcome, 'released');
    // Nothing of the interrupted image is left attached or mounted.
    const inv = hostInventory(host.stateDir);
    assert.deepEqual(inv.loops, []);
    assert.deepEqual(inv.mounts, []);
    // Released at once, not after the visibility timeout.
    assert.equal((await sqs.depth(host.queueUrl)).visible, 1);

    proxy.setBytesPerSecond(1024 ** 3);
    const second = agentFor(t, host);
    const done = await second.waitForLog((l) => outcomeOf(l) !== undefined, 60_000);
    assert.equal(done.outcome, 'applied');
    assert.equal((await second.stop()).code, 0);
  });

  test('a second signal exits at once; the next start recovers the interrupted work', async (t) => {
    const proxy = await startThrottleProxy(s3.port, 512 * 1024);
    t.after(() => proxy.stop());
    const host = await newHost(t, {
      s3Endpoint: proxy.endpoint,
      env: { THINRELAY_DRAIN_SECONDS: '600' },
    });
    const key = 'images/abandoned.tar';
    const { eTag } = await s3.putObject(bucket, key, await bigTar(8 * 1024 * 1024));
    await sqs.send(host.queueUrl, serializeImageEvent(putEvent(key, eTag)));

    const first = agentFor(t, host, [], { THINRELAY_VISIBILITY_TIMEOUT: '3' });
    await first.waitForLog((l) => l.msg === 'unpacking');
    first.kill('SIGTERM');
    await first.waitForLog((l) => l.msg === 'stopping: no new messages');
    first.kill('SIGTERM');
    const exit = await first.exited;
    assert.equal(exit.code, 143);

    proxy.setBytesPerSecond(1024 ** 3);
    const second = agentFor(t, host, [], { THINRELAY_VISIBILITY_TIMEOUT: '3' });
    // Reconcile on start releases the dead process's volume, then the
    // message (visible again after its timeout) is applied.
    const done = await second.waitForLog((l) => outcomeOf(l) !== undefined, 60_000);
    assert.equal(done.outcome, 'applied');
    assert.ok(
      second.logs.some((l) => l.msg === 'reconcile'),
      'reconcile acted on start',
    );
    assert.equal((await second.stop()).code, 0);
    const inv = hostInventory(host.stateDir);
    assert.equal(inv.mounts.length, 0);
    assert.equal(inv.loops.length, 1, 'only the active snapshot is attached');
  });

  test('a poison image reaches the DLQ after maxReceiveCount; redrive + a fixed object succeed', async (t) => {
    const host = await newHost(t, { maxReceiveCount: 3 });
    const key = 'images/poison.tar';
    const { eTag } = await s3.putObject(bucket, key, await hostileTar());
    await sqs.send(host.queueUrl, serializeImageEvent(putEvent(key, eTag)));

    const agent = agentFor(t, host);
    const deadline = Date.now() + 60_000;
    while ((await sqs.depth(host.dlqUrl)).visible === 0) {
      assert.ok(Date.now() < deadline, 'the message never reached the DLQ');
      await sleep(250);
    }
    const failed = agent.outcomes().filter((l) => l.outcome === 'failed');
    assert.ok(failed.length >= 1);
    assert.equal(failed[0]!.code, 'ARCHIVE_PATH_ESCAPE');
    // The hostile archive was unpacked once; later receives were handed straight back.
    assert.equal(countRows(host.stateDir, `SELECT COUNT(*) FROM jobs`), 1);
    const failedCli = await runCli(['failed', '--json'], host.env);
    assert.equal(failedCli.code, 0, failedCli.stderr);
    assert.match(failedCli.stdout, /ARCHIVE_PATH_ESCAPE/);

    // The operator fixes the object, then redrives the DLQ.
    await s3.putObject(bucket, key, await smallTar('fixed'));
    const arn = await sqs.client.send(
      new GetQueueAttributesCommand({ QueueUrl: host.dlqUrl, AttributeNames: ['QueueArn'] }),
    );
    const dlqArn = arn.Attributes!.QueueArn!;
    await sqs.client.send(new StartMessageMoveTaskCommand({ SourceArn: dlqArn }));
    const applied = await agent.waitForLog((l) => l.outcome === 'applied', 60_000);
    assert.equal(applied.key, key);
    const tasks = await sqs.client.send(new ListMessageMoveTasksCommand({ SourceArn: dlqArn }));
    assert.equal(tasks.Results?.[0]?.Status, 'COMPLETED');
    assert.deepEqual(await sqs.depth(host.dlqUrl), { visible: 0, inFlight: 0 });
    const images = await runCli(['images', '--json'], host.env);
    const ready = (JSON.parse(images.stdout) as { key: string; status: string }[]).filter(
      (i) => i.key === key && i.status === 'ready',
    );
    assert.equal(ready.length, 1);
    assert.equal((await agent.stop()).code, 0);
  });

  test('a delete event retires the image; health and metrics are served', async (t) => {
    const host = await newHost(t);
    const key = 'images/retired.tar';
    const { eTag } = await s3.putObject(bucket, key, await smallTar('retire'));
    await sqs.send(host.queueUrl, serializeImageEvent(putEvent(key, eTag)));
    const agent = agentFor(t, host);
    const endpoint = await agent.waitForLog((l) => l.msg === 'health and metrics endpoint');
    await agent.waitForLog((l) => l.outcome === 'applied');

    const del: ImageEvent = {
      ...putEvent(key, eTag),
      kind: 'image.delete',
      eTag: null,
      sequencer: nextSequencer(),
    };
    await sqs.send(host.queueUrl, serializeImageEvent(del));
    await agent.waitForLog((l) => l.outcome === 'applied' && l.kind === 'image.delete');
    const images = await runCli(['images', '--json'], host.env);
    assert.deepEqual(JSON.parse(images.stdout), [], 'no live image for a deleted key');

    const url = endpoint.url as string;
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.match(metrics, /^thinrelay_messages_total\{outcome="applied"\} 2$/m);
    assert.match(metrics, /^thinrelay_images_in_flight 0$/m);
    assert.match(metrics, /^thinrelay_image_duration_seconds_count 2$/m);
    // Capacity, state, build and process: read at scrape time from the pool, the store, the process.
    assert.match(
      metrics,
      /^thinrelay_build_info\{version="\d+\.\d+\.\d+",commit="[^"]+",node="v\d+[^"]*"\} 1$/m,
    );
    assert.match(metrics, /^thinrelay_images\{status="removed"\} [1-9]\d*$/m);
    assert.match(metrics, /^thinrelay_pool_bytes\{area="data",kind="total"\} [1-9]\d*$/m);
    assert.match(metrics, /^thinrelay_pool_bytes\{area="data",kind="used"\} \d+$/m);
    assert.match(metrics, /^thinrelay_pool_free_bytes [1-9]\d*$/m);
    assert.match(metrics, /^thinrelay_pool_healthy 1$/m);
    assert.match(metrics, /^process_resident_memory_bytes [1-9]\d*$/m);
    assert.match(metrics, /^process_cpu_user_seconds_total [\d.e-]+$/m);
    assert.match(metrics, /^nodejs_eventloop_lag_seconds\{quantile="0.99"\} [\d.e-]+$/m);
    assert.equal((await agent.stop()).code, 0);
  });
});
