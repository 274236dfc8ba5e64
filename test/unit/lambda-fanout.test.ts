import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ListQueuesCommand,
  SendMessageBatchCommand,
  SQSClient,
  type SendMessageBatchCommandInput,
} from '@aws-sdk/client-sqs';
import { mockClient } from 'aws-sdk-client-mock';
import { parseImageEvent, type ImageEvent } from '../../schema/image-event.js';
import { loadConfig } from '../../lambda/src/config.js';
import {
  FanoutError,
  publish,
  QueueDirectory,
  targetsFor,
  toBatches,
  type PublishOptions,
} from '../../lambda/src/fanout.js';

const base = 'https://sqs.eu-west-1.amazonaws.com/123456789012/';
const q = (name: string) => `${base}${name}`;
const noRoutes = { routes: [], queuePrefix: 'tr-host-' };

function event(i: number, key = `images/img-${i}.tar`): ImageEvent {
  return {
    schemaVersion: 1,
    kind: 'image.put',
    bucket: 'images-bucket',
    key,
    versionId: null,
    eTag: `etag${i}`,
    size: i,
    sequencer: (0x1000 + i).toString(16),
    eventTime: '2026-11-23T10:00:00.000Z',
  };
}

function setup() {
  const sqs = new SQSClient({ region: 'eu-west-1' });
  const mock = mockClient(sqs);
  const delays: number[] = [];
  const opts: PublishOptions = {
    sqs,
    concurrency: 4,
    sleep: (ms) => {
      delays.push(ms);
      return Promise.resolve();
    },
  };
  return { sqs, mock, opts, delays };
}

/** Accept everything, like a healthy SQS. */
function acceptAll(input: SendMessageBatchCommandInput) {
  return { Successful: (input.Entries ?? []).map((e) => ({ Id: e.Id })), Failed: [] };
}

function batchInputs(mock: ReturnType<typeof setup>['mock']): SendMessageBatchCommandInput[] {
  return mock.commandCalls(SendMessageBatchCommand).map((c) => c.args[0].input);
}

test('25 events become 3 batches (10+10+5) per queue, with attributes and valid bodies', async () => {
  const { mock, opts } = setup();
  mock.on(SendMessageBatchCommand).callsFake(acceptAll);
  const queues = [q('tr-host-a-1'), q('tr-host-b-1')];
  const events = Array.from({ length: 25 }, (_, i) => event(i));
  const result = await publish(events, queues, noRoutes, opts);
  assert.deepEqual(result, { sent: 50, queues: 2 });
  const calls = batchInputs(mock);
  assert.equal(calls.length, 6);
  for (const url of queues) {
    const sizes = calls.filter((c) => c.QueueUrl === url).map((c) => c.Entries?.length);
    assert.deepEqual(sizes, [10, 10, 5]);
  }
  const entry = calls[0]?.Entries?.[0];
  assert.ok(entry?.MessageBody);
  assert.deepEqual(parseImageEvent(entry.MessageBody), events[0]);
  assert.deepEqual(entry.MessageAttributes, {
    kind: { DataType: 'String', StringValue: 'image.put' },
    bucket: { DataType: 'String', StringValue: 'images-bucket' },
    key: { DataType: 'String', StringValue: 'images/img-0.tar' },
  });
  const ids = calls[0]?.Entries?.map((e) => e.Id);
  assert.equal(new Set(ids).size, ids?.length, 'ids unique within a batch');
});

test('batches also respect the 256 KiB total', () => {
  // Keys this long are not possible in S3 (1 KiB max); they make each entry ~60 KiB.
  const bigKey = `images/${'k'.repeat(30_000)}.tar`;
  const batches = toBatches(Array.from({ length: 10 }, (_, i) => event(i, bigKey)));
  assert.deepEqual(
    batches.map((b) => b.length),
    [4, 4, 2],
  );
  for (const b of batches) assert.ok(b.reduce((n, e) => n + e.bytes, 0) <= 256 * 1024);
});

test('routes send matching keys to their groups only; other keys go to every host', () => {
  const config = loadConfig({
    HOST_QUEUE_PREFIX: 'tr-host-',
    ROUTES: JSON.stringify({ 'images/gpu/': 'gpu', 'images/gpu/db/': ['db', 'gpu'] }),
  });
  const queues = [q('tr-host-gpu-1'), q('tr-host-gpu-2'), q('tr-host-db-1'), q('tr-host-web-1')];
  assert.deepEqual(targetsFor('images/gpu/x.tar', queues, config), [queues[0], queues[1]]);
  // Longest prefix wins.
  assert.deepEqual(targetsFor('images/gpu/db/x.tar', queues, config), queues.slice(0, 3));
  assert.deepEqual(targetsFor('images/web/x.tar', queues, config), queues);
  // "gpu" must be a whole fragment: tr-host-gpux-1 is not in group gpu.
  assert.deepEqual(targetsFor('images/gpu/x.tar', [q('tr-host-gpux-1')], config), []);
});

test('routing is applied when publishing', async () => {
  const { mock, opts } = setup();
  mock.on(SendMessageBatchCommand).callsFake(acceptAll);
  const config = { routes: [{ keyPrefix: 'images/gpu/', groups: ['gpu'] }], queuePrefix: 'tr-' };
  const queues = [q('tr-gpu-1'), q('tr-web-1')];
  await publish([event(1, 'images/gpu/a.tar'), event(2, 'images/b.tar')], queues, config, opts);
  const byQueue = batchInputs(mock).map((c) => [c.QueueUrl, c.Entries?.length]);
  assert.deepEqual(byQueue.sort(), [
    [q('tr-gpu-1'), 2],
    [q('tr-web-1'), 1],
  ]);
});

test('entries that failed without SenderFault are retried (only them) and then succeed', async () => {
  const { mock, opts, delays } = setup();
  mock
    .on(SendMessageBatchCommand)
    .callsFakeOnce((input: SendMessageBatchCommandInput) => {
      const [first, ...rest] = input.Entries ?? [];
      return {
        Successful: rest.map((e) => ({ Id: e.Id })),
        Failed: [{ Id: first?.Id, Code: 'InternalError', SenderFault: false }],
      };
    })
    .callsFake(acceptAll);
  const result = await publish([event(1), event(2), event(3)], [q('tr-host-a')], noRoutes, opts);
  assert.equal(result.sent, 3);
  const calls = batchInputs(mock);
  assert.deepEqual(
    calls.map((c) => c.Entries?.length),
    [3, 1],
  );
  assert.equal(delays.length, 1);
});

test('a SenderFault is not retried and makes publish throw', async () => {
  const { mock, opts } = setup();
  mock.on(SendMessageBatchCommand).callsFake((input: SendMessageBatchCommandInput) => ({
    Successful: [],
    Failed: [{ Id: input.Entries?.[0]?.Id, Code: 'InvalidParameterValue', SenderFault: true }],
  }));
  await assert.rejects(publish([event(1)], [q('tr-host-a')], noRoutes, opts), (err: unknown) => {
    assert.ok(err instanceof FanoutError);
    assert.equal(err.failures.length, 1);
    assert.equal(err.failures[0]?.senderFault, true);
    assert.match(
      err.message,
      /tr-host-a images-bucket\/images\/img-1.tar@1001: InvalidParameterValue/,
    );
    return true;
  });
  assert.equal(batchInputs(mock).length, 1);
});

test('persistent failures are retried a bounded number of times, then listed in the error', async () => {
  const { mock, opts, delays } = setup();
  mock.on(SendMessageBatchCommand, { QueueUrl: q('tr-host-good') }).callsFake(acceptAll);
  mock
    .on(SendMessageBatchCommand, { QueueUrl: q('tr-host-bad') })
    .rejects(Object.assign(new Error('throttled'), { name: 'ThrottlingException' }));
  const queues = [q('tr-host-good'), q('tr-host-bad')];
  await assert.rejects(
    publish([event(1), event(2)], queues, noRoutes, { ...opts, maxAttempts: 3 }),
    (err: unknown) => {
      assert.ok(err instanceof FanoutError);
      assert.deepEqual(
        err.failures.map((f) => [f.queueUrl, f.key, f.code, f.senderFault]),
        [
          [q('tr-host-bad'), 'images/img-1.tar', 'ThrottlingException', false],
          [q('tr-host-bad'), 'images/img-2.tar', 'ThrottlingException', false],
        ],
      );
      assert.match(err.message, /^2 message\(s\) not delivered/);
      return true;
    },
  );
  const bad = batchInputs(mock).filter((c) => c.QueueUrl === q('tr-host-bad'));
  assert.equal(bad.length, 3);
  // Exponential backoff with full jitter: each delay below base * 2^n.
  assert.equal(delays.length, 2);
  assert.ok((delays[0] ?? Infinity) < 100 && (delays[1] ?? Infinity) < 200);
});

test('discovery follows NextToken and caches until the TTL expires', async () => {
  const { sqs, mock } = setup();
  mock
    .on(ListQueuesCommand, { NextToken: undefined })
    .resolves({ QueueUrls: [q('tr-host-b')], NextToken: 't1' })
    .on(ListQueuesCommand, { NextToken: 't1' })
    .resolves({ QueueUrls: [q('tr-host-a')] });
  let now = 1_000;
  const dir = new QueueDirectory(sqs, 'tr-host-', 60_000, () => now);
  assert.deepEqual(await dir.list(), [q('tr-host-a'), q('tr-host-b')]);
  const calls = mock.commandCalls(ListQueuesCommand);
  assert.equal(calls.length, 2);
  assert.equal(calls[0]?.args[0].input.QueueNamePrefix, 'tr-host-');
  now += 59_000;
  await dir.list();
  assert.equal(mock.commandCalls(ListQueuesCommand).length, 2, 'served from cache');
  now += 2_000;
  await dir.list();
  assert.equal(mock.commandCalls(ListQueuesCommand).length, 4, 'rediscovered after TTL');
  dir.invalidate();
  await dir.list();
  assert.equal(mock.commandCalls(ListQueuesCommand).length, 6, 'rediscovered after invalidate');
});

test('config errors name the variable', () => {
  assert.throws(() => loadConfig({}), /HOST_QUEUE_PREFIX: required/);
  assert.throws(() => loadConfig({ HOST_QUEUE_PREFIX: 'p-', ROUTES: '{' }), /ROUTES: not JSON/);
  assert.throws(
    () => loadConfig({ HOST_QUEUE_PREFIX: 'p-', ROUTES: '{"images/": ["a-b"]}' }),
    /ROUTES: route "images\/"/,
  );
  assert.throws(
    () => loadConfig({ HOST_QUEUE_PREFIX: 'p-', FANOUT_CONCURRENCY: '0' }),
    /FANOUT_CONCURRENCY: must be an integer/,
  );
  assert.throws(() => loadConfig({ HOST_QUEUE_URLS: 'not-a-url' }), /HOST_QUEUE_URLS: not a queue/);
  const c = loadConfig({
    HOST_QUEUE_URLS: `${q('x')}, ${q('y')}`,
    IMAGE_SUFFIXES: '.tar, .tar.gz',
  });
  assert.deepEqual(c.queueUrls, [q('x'), q('y')]);
  assert.deepEqual(c.imageSuffixes, ['.tar', '.tar.gz']);
  assert.equal(c.fanoutConcurrency, 16);
});
