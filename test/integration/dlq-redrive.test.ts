/**
 * `thinrelay dlq peek` and `thinrelay redrive` as an operator runs them (the
 * bundled CLI, a child process) against an in-process SQS emulator
 * (local-aws-sqs 2.x, which implements message move tasks). Each test gets
 * its own source queue + DLQ pair with messages really dead-lettered by the
 * emulator's RedrivePolicy (received, not deleted, visibility expired).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  ListMessageMoveTasksCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
  StartMessageMoveTaskCommand,
  type Message,
} from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';
import type { Server } from 'node:http';
import { serializeImageEvent, type ImageEvent } from '../../schema/image-event.js';
import { cliPath, runCli } from '../helpers/cli.js';

const REGION = 'us-east-1';
let server: Server;
let endpoint: string;
let sqs: SQSClient;
let env: NodeJS.ProcessEnv;

before(async () => {
  server = await createSqsServer({
    port: 0,
    hostname: '127.0.0.1',
    region: REGION,
    emulateQueueCreationLifecycle: false,
  });
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  sqs = new SQSClient({
    region: REGION,
    endpoint,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
  });
  env = {
    AWS_ENDPOINT_URL_SQS: endpoint,
    AWS_REGION: REGION,
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_EC2_METADATA_DISABLED: 'true',
    THINRELAY_DLQ_URL: '',
  };
});

after(async () => {
  sqs.destroy();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

function imageEvent(key: string, n: number): ImageEvent {
  return {
    schemaVersion: 1,
    kind: 'image.put',
    bucket: 'thinrelay-images',
    key,
    versionId: null,
    eTag: `0123456789abcdef0123456789abcde${n}`,
    size: 1000 + n,
    sequencer: `0055AED6DCD9028${n}`,
    eventTime: '2026-11-23T01:00:00.000Z',
  };
}

const NOT_AN_EVENT = 'hello, I am not JSON ' + 'x'.repeat(400);

let pairs = 0;

interface Pair {
  sourceUrl: string;
  dlqUrl: string;
  dlqArn: string;
  bodies: string[];
}

/** A host queue whose messages went to its DLQ the way SQS does it: received, never deleted. */
async function deadLettered(keys: string[], extraBodies: string[] = []): Promise<Pair> {
  const n = ++pairs;
  const dlqUrl = await createQueue(`thinrelay-dlq-${n}`);
  const dlqArn = await attribute(dlqUrl, 'QueueArn');
  const sourceUrl = await createQueue(`thinrelay-host-default-h${n}`, {
    VisibilityTimeout: '1',
    RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 1 }),
  });
  const bodies = [...keys.map((k, i) => serializeImageEvent(imageEvent(k, i))), ...extraBodies];
  for (const body of bodies) {
    await sqs.send(new SendMessageCommand({ QueueUrl: sourceUrl, MessageBody: body }));
  }
  // Receive without deleting until the emulator has moved everything (maxReceiveCount 1).
  await until(async () => {
    await receive(sourceUrl, 1);
    return (await count(dlqUrl)) === bodies.length && (await count(sourceUrl)) === 0;
  }, 'messages dead-lettered');
  return { sourceUrl, dlqUrl, dlqArn, bodies };
}

async function createQueue(name: string, Attributes?: Record<string, string>): Promise<string> {
  const out = await sqs.send(new CreateQueueCommand({ QueueName: name, Attributes }));
  assert.ok(out.QueueUrl);
  return out.QueueUrl;
}

async function attribute(url: string, name: 'QueueArn'): Promise<string> {
  const out = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: [name] }),
  );
  const v = out.Attributes?.[name];
  assert.ok(v);
  return v;
}

async function counts(url: string): Promise<{ visible: number; inFlight: number }> {
  const out = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
    }),
  );
  return {
    visible: Number(out.Attributes?.ApproximateNumberOfMessages),
    inFlight: Number(out.Attributes?.ApproximateNumberOfMessagesNotVisible),
  };
}

/**
 * Messages a queue holds, for queues with nothing in flight (the emulator
 * counts in-flight messages in ApproximateNumberOfMessages too).
 */
async function count(url: string): Promise<number> {
  const c = await counts(url);
  return c.visible + c.inFlight;
}

async function receive(url: string, visibilityTimeout: number): Promise<Message[]> {
  const out = await sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: url,
      MaxNumberOfMessages: 10,
      WaitTimeSeconds: 0,
      VisibilityTimeout: visibilityTimeout,
    }),
  );
  return out.Messages ?? [];
}

async function until(check: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every body the queue holds (received with a long visibility timeout: the test owns it). */
async function drainBodies(url: string): Promise<string[]> {
  const bodies: string[] = [];
  for (let round = 0; round < 20; round++) {
    const got = await receive(url, 60);
    if (got.length === 0) break;
    bodies.push(...got.map((m) => m.Body ?? ''));
  }
  return bodies.sort();
}

function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${stderr}`);
  return lines[0] ?? '';
}

interface PeekJson {
  approximateNumberOfMessages: number;
  stoppedBy: string;
  messages: {
    messageId: string;
    receiveCount: number;
    sentAt: string;
    firstReceivedAt: string;
    deadLetterSourceArn: string | null;
    event: ImageEvent | null;
    bodyError: string | null;
    bodyPreview: string | null;
  }[];
}

test('dlq peek lists what waits, parsed, without consuming it', async () => {
  const keys = ['images/web-1.tar', 'images/db +2 ü.tar.gz', 'images/gpu.tar'];
  const pair = await deadLettered(keys, [NOT_AN_EVENT]);
  const before = await counts(pair.dlqUrl);
  assert.deepEqual(before, { visible: 4, inFlight: 0 });

  const r = await runCli(['dlq', 'peek', '--dlq-url', pair.dlqUrl, '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const peek = JSON.parse(r.stdout) as PeekJson;
  assert.equal(peek.approximateNumberOfMessages, 4);
  assert.equal(peek.messages.length, 4);
  assert.equal(new Set(peek.messages.map((m) => m.messageId)).size, 4, 'deduplicated');
  const parsed = peek.messages.filter((m) => m.event !== null);
  assert.deepEqual(parsed.map((m) => m.event?.key).sort(), [...keys].sort());
  const first = parsed.find((m) => m.event?.key === 'images/web-1.tar');
  // The event as parsed, in the CLI's JSON convention: `etag`, never `eTag` (cli/output.ts).
  const { eTag, ...sent } = imageEvent('images/web-1.tar', 0);
  assert.deepEqual(first?.event, { ...sent, etag: eTag });
  for (const m of peek.messages) {
    // The peek's own single receive (the emulator restarts the count when it dead-letters).
    assert.ok(m.receiveCount >= 1, 'the peek counts as a receive');
    assert.ok(Date.parse(m.sentAt) > 0);
    assert.ok(Date.parse(m.firstReceivedAt) > 0);
    assert.match(m.deadLetterSourceArn ?? '', /thinrelay-host-default-h\d+$/);
  }
  const bad = peek.messages.find((m) => m.event === null);
  assert.match(bad?.bodyError ?? '', /not JSON/);
  assert.equal(bad?.bodyPreview, NOT_AN_EVENT.slice(0, 200) + '…');

  // Nothing consumed: same counts once the zero visibility timeout has lapsed.
  await until(async () => (await counts(pair.dlqUrl)).inFlight === 0, 'peeked messages visible');
  assert.deepEqual(await counts(pair.dlqUrl), before);

  // The human form: a table with the keys, the bad body called out, the honest note.
  const h = await runCli(['dlq', 'peek', '--dlq-url', pair.dlqUrl], env);
  assert.equal(h.code, 0, h.stderr);
  assert.match(h.stdout, /about 4 message\(s\) waiting; 4 seen/);
  for (const k of keys) assert.ok(h.stdout.includes(k), `key ${k} shown`);
  assert.match(h.stdout, /not an image event: .*invalid image event: not JSON/);
  assert.match(h.stdout, /peeking counts as a receive/);

  // --max stops early and says so.
  const m = await runCli(['dlq', 'peek', '--dlq-url', pair.dlqUrl, '--max', '2'], env);
  assert.equal(m.code, 0, m.stderr);
  assert.match(m.stdout, /2 seen/);
  assert.match(m.stdout, /stopped at --max 2/);
  assert.deepEqual(await counts(pair.dlqUrl), before);
});

test('dlq peek refuses a queue with a RedrivePolicy (peeking would dead-letter its messages)', async () => {
  const pair = await deadLettered(['images/a.tar']);
  const r = await runCli(['dlq', 'peek', '--dlq-url', pair.sourceUrl], env);
  assert.equal(r.code, 2);
  assert.match(oneLine(r.stderr), /^thinrelay: dlq: \[NOT_A_DLQ\] .*RedrivePolicy/);
});

test('redrive moves dead-lettered messages back to their source queue and reports progress', async () => {
  const pair = await deadLettered(['images/a.tar', 'images/b.tar', 'images/c.tar'], [NOT_AN_EVENT]);
  const r = await runCli(['redrive', '--dlq-url', pair.dlqUrl], env);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^COMPLETED: moved 4 of 4 message\(s\) from .* to their original queues \(thinrelay-host-default-h\d+\) in [\d.]+ s\n$/,
  );
  // Not a TTY: progress as JSON lines on stderr, ending with the completed count.
  const progress = r.stderr
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { msg: string; status: string; moved: number; toMove: number })
    .filter((l) => l.msg === 'redrive progress');
  assert.ok(progress.length >= 1, r.stderr);
  assert.deepEqual(
    {
      status: progress.at(-1)?.status,
      moved: progress.at(-1)?.moved,
      toMove: progress.at(-1)?.toMove,
    },
    { status: 'COMPLETED', moved: 4, toMove: 4 },
  );
  assert.equal(await count(pair.dlqUrl), 0, 'DLQ empty');
  assert.deepEqual(
    await drainBodies(pair.sourceUrl),
    [...pair.bodies].sort(),
    'all back at the source',
  );
});

test('redrive --to-url sends them to an explicit queue; --json gives the final task', async () => {
  const pair = await deadLettered(['images/x.tar', 'images/y.tar']);
  const elsewhere = await createQueue(`thinrelay-replay-${pairs}`);
  const r = await runCli(
    [
      'redrive',
      '--dlq-url',
      pair.dlqUrl,
      '--to-url',
      elsewhere,
      '--max-per-second',
      '50',
      '--json',
    ],
    env,
  );
  assert.equal(r.code, 0, r.stderr);
  const task = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(task.status, 'COMPLETED');
  assert.equal(task.moved, 2);
  assert.equal(task.maxPerSecond, 50);
  assert.equal(task.destinationArn, await attribute(elsewhere, 'QueueArn'));
  assert.equal(task.followingExisting, false);
  assert.equal(await count(pair.dlqUrl), 0);
  assert.equal(await count(pair.sourceUrl), 0);
  assert.deepEqual(await drainBodies(elsewhere), [...pair.bodies].sort());
});

test('redrive follows a task that is already running instead of failing', async () => {
  const pair = await deadLettered(['images/1.tar', 'images/2.tar', 'images/3.tar']);
  // Someone else's task, slow enough (1 message a second) to still run when we come.
  const started = await sqs.send(
    new StartMessageMoveTaskCommand({ SourceArn: pair.dlqArn, MaxNumberOfMessagesPerSecond: 1 }),
  );
  assert.ok(started.TaskHandle);
  const r = await runCli(['redrive', '--dlq-url', pair.dlqUrl, '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const task = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(task.followingExisting, true);
  assert.equal(task.status, 'COMPLETED');
  assert.equal(task.moved, 3);
  assert.equal(task.maxPerSecond, 1, "it is the other operator's task");
  assert.match(r.stderr, /already running/);
  const tasks = await sqs.send(
    new ListMessageMoveTasksCommand({ SourceArn: pair.dlqArn, MaxResults: 10 }),
  );
  assert.equal(tasks.Results?.length, 1, 'no second task was started');
  assert.equal(await count(pair.dlqUrl), 0);
  assert.equal((await drainBodies(pair.sourceUrl)).length, 3);
});

test('redrive --no-wait returns the handle; --cancel stops the task; cancelling twice is a usage error', async () => {
  const pair = await deadLettered(['images/1.tar', 'images/2.tar', 'images/3.tar', 'images/4.tar']);
  const r = await runCli(
    ['redrive', '--dlq-url', pair.dlqUrl, '--max-per-second', '1', '--no-wait', '--json'],
    env,
  );
  assert.equal(r.code, 0, r.stderr);
  const task = JSON.parse(r.stdout) as { taskHandle: string; status: string };
  assert.equal(task.status, 'RUNNING');
  assert.ok(task.taskHandle);

  const c = await runCli(['redrive', '--cancel', task.taskHandle], env);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /^cancel requested; \d message\(s\) had been moved/);
  let moved = -1;
  await until(async () => {
    const out = await sqs.send(
      new ListMessageMoveTasksCommand({ SourceArn: pair.dlqArn, MaxResults: 1 }),
    );
    moved = out.Results?.[0]?.ApproximateNumberOfMessagesMoved ?? -1;
    return out.Results?.[0]?.Status === 'CANCELLED';
  }, 'task cancelled');
  assert.ok(moved >= 0 && moved < 4, `stopped early (moved ${moved})`);
  assert.equal(await count(pair.dlqUrl), 4 - moved, 'the rest stays in the DLQ');
  assert.equal(await count(pair.sourceUrl), moved);

  const again = await runCli(['redrive', '--cancel', task.taskHandle], env);
  assert.equal(again.code, 2);
  assert.match(oneLine(again.stderr), /\[TASK_NOT_RUNNING\]/);
  const junk = await runCli(['redrive', '--cancel', 'not-a-handle'], env);
  assert.equal(junk.code, 2);
  assert.match(oneLine(junk.stderr), /\[USAGE\] not a task handle/);
});

test('Ctrl-C stops following without cancelling, and says how to cancel', async () => {
  const pair = await deadLettered(['images/1.tar', 'images/2.tar', 'images/3.tar', 'images/4.tar']);
  const child = spawn(
    process.execPath,
    [cliPath, 'redrive', '--dlq-url', pair.dlqUrl, '--max-per-second', '1'],
    {
      env: { ...process.env, THINRELAY_LOG_LEVEL: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  const closed = new Promise<number | null>((resolve) =>
    child.on('close', (code) => resolve(code)),
  );
  await new Promise<void>((resolve) =>
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('redrive progress')) resolve();
    }),
  );
  child.kill('SIGINT');
  assert.equal(await closed, 130);
  assert.match(stderr, /stopped following; the move task keeps running/);
  const handle = /thinrelay redrive --cancel (\S+)/.exec(stderr)?.[1];
  assert.ok(handle !== undefined && handle !== 'HANDLE', stderr);
  const out = await sqs.send(
    new ListMessageMoveTasksCommand({ SourceArn: pair.dlqArn, MaxResults: 1 }),
  );
  assert.equal(out.Results?.[0]?.Status, 'RUNNING', 'not cancelled');
  assert.equal(out.Results?.[0]?.TaskHandle, handle);
  // Leave nothing running behind.
  const c = await runCli(['redrive', '--cancel', handle], env);
  assert.equal(c.code, 0, c.stderr);
});

test('a move task that FAILS (its source queue was deleted) exits 1 with the reason; the messages stay', async () => {
  const pair = await deadLettered(['images/orphan.tar']);
  // A second host queue keeps the DLQ a DLQ after the first one is gone.
  const other = await createQueue(`thinrelay-host-default-h${pairs}b`, {
    RedrivePolicy: JSON.stringify({ deadLetterTargetArn: pair.dlqArn, maxReceiveCount: 5 }),
  });
  await sqs.send(new DeleteQueueCommand({ QueueUrl: pair.sourceUrl }));
  const r = await runCli(['redrive', '--dlq-url', pair.dlqUrl], env);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stdout, /^FAILED: moved 0 of 1 message\(s\)/);
  const last = r.stderr.trim().split('\n').at(-1) ?? '';
  assert.match(last, /^thinrelay: redrive: \[MOVE_TASK_FAILED\] .*NonExistentQueue.* — .*--to-url/);
  // The failed task still holds the message in flight (the DLQ's visibility timeout); the
  // emulator also counts in-flight messages in ApproximateNumberOfMessages, real SQS does not.
  const left = await counts(pair.dlqUrl);
  assert.equal(left.inFlight, 1, 'still in the DLQ, held by the failed task');
  assert.equal(await count(other), 0, 'nothing went anywhere else');
});

test('redrive of a queue that is not a DLQ, a missing queue, an unreachable SQS: one line, exit 2 or 3', async () => {
  const pair = await deadLettered(['images/a.tar']);
  const notDlq = await runCli(['redrive', '--dlq-url', pair.sourceUrl], env);
  assert.equal(notDlq.code, 2);
  assert.match(
    oneLine(notDlq.stderr),
    /^thinrelay: redrive: \[NOT_A_DLQ\] .* is not a dead-letter queue/,
  );

  const missing = await runCli(
    ['redrive', '--dlq-url', `${endpoint}/123456789012/no-such-queue`],
    env,
  );
  assert.equal(missing.code, 4);
  assert.match(oneLine(missing.stderr), /\[QUEUE_NOT_FOUND\]/);

  const unreachable = await runCli(
    ['redrive', '--dlq-url', 'http://127.0.0.1:1/123456789012/dlq'],
    {
      ...env,
      AWS_ENDPOINT_URL_SQS: 'http://127.0.0.1:1',
      AWS_MAX_ATTEMPTS: '1',
    },
  );
  assert.equal(unreachable.code, 3);
  assert.match(oneLine(unreachable.stderr), /\[QUEUE_UNREACHABLE\] .*ECONNREFUSED/);

  const noUrl = await runCli(['redrive'], env);
  assert.equal(noUrl.code, 2);
  assert.match(oneLine(noUrl.stderr), /\[USAGE\] no DLQ: pass --dlq-url/);

  const badRate = await runCli(['redrive', '--dlq-url', pair.dlqUrl, '--max-per-second', '0'], env);
  assert.equal(badRate.code, 2);
  assert.match(oneLine(badRate.stderr), /--max-per-second must be an integer from 1 to 500/);

  // THINRELAY_DLQ_URL stands in for --dlq-url; nothing was moved by the failures above.
  const viaEnv = await runCli(['dlq', 'peek', '--json'], {
    ...env,
    THINRELAY_DLQ_URL: pair.dlqUrl,
  });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.equal((JSON.parse(viaEnv.stdout) as PeekJson).messages.length, 1);
});
