/**
 * The fan-out handler records each rollout in the fleet table (FLEET_TABLE)
 * after sending: real handler, SQS and DynamoDB emulators on 127.0.0.1. And a
 * table that cannot be written does not cost the fan-out: the messages are
 * sent, the failure is reported for the log and the metric.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import type { Context, S3Event } from 'aws-lambda';
import { fromItem } from '../../schema/item-codec.js';
import { recordRollouts, type RolloutEvent } from '../../lambda/src/rollouts.js';
import { fleetKeys, queueNames } from '../../schema/fleet.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import { startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';

const TABLE = 'tr-fleet';
let dynamo: DynamoEmulator;
let sqs: SqsEmulator;

before(async () => {
  [dynamo, sqs] = await Promise.all([startDynamoEmulator(), startSqsEmulator()]);
  await createFleetTable(dynamo.client, TABLE);
});
after(async () => {
  await Promise.all([dynamo?.stop(), sqs?.stop()]);
});

function notification(key: string, sequencer: string): S3Event {
  return {
    Records: [
      {
        eventName: 'ObjectCreated:Put',
        eventTime: '2026-11-30T10:00:00.000Z',
        s3: {
          bucket: { name: 'images-bucket' },
          object: { key, size: 10, eTag: 'e1', sequencer },
        },
      },
    ],
  } as unknown as S3Event;
}

test('each sent event becomes a rollout item naming the queues it went to', async () => {
  const web = await sqs.createQueue(queueNames.hostQueue('tr', 'default', 'i-web'));
  const gpu = await sqs.createQueue(queueNames.hostQueue('tr', 'gpu', 'i-gpu'));
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_SQS: sqs.endpoint,
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    HOST_QUEUE_PREFIX: queueNames.hostQueuePrefix('tr'),
    ROUTES: JSON.stringify({ 'images/gpu/': ['gpu'] }),
    IMAGE_PREFIX: 'images/',
    FLEET_TABLE: TABLE,
    POWERTOOLS_LOG_LEVEL: 'ERROR',
    POWERTOOLS_METRICS_DISABLED: 'true',
  });
  const { handler } = await import('../../lambda/src/handler.js');
  await handler(notification('images/gpu/cuda.tar', '0A'), {} as Context, () => undefined);
  await handler(notification('images/base.tar', '0B'), {} as Context, () => undefined);

  assert.equal((await sqs.depth(gpu.url)).visible, 2);
  assert.equal((await sqs.depth(web.url)).visible, 1);
  const out = await dynamo.client.send(new ScanCommand({ TableName: TABLE }));
  const items = (out.Items ?? [])
    .map((i) => fromItem(i))
    .sort((a, b) => (a.pk as string).localeCompare(b.pk as string));
  assert.equal(items.length, 2);
  const [base, cuda] = items as [Record<string, unknown>, Record<string, unknown>];
  assert.equal(cuda.pk, fleetKeys.rolloutPk('images/gpu/cuda.tar'));
  assert.equal(cuda.sk, fleetKeys.rolloutSk('0A'));
  assert.equal(cuda.kind, 'image.put');
  assert.equal(cuda.eTag, 'e1');
  assert.deepEqual(cuda.queues, ['tr-host-gpu-i-gpu']);
  assert.deepEqual(base.queues, ['tr-host-default-i-web', 'tr-host-gpu-i-gpu']);
  assert.ok(Math.abs(Number(base.sentAt) - Date.now()) < 60_000);
});

test('a table that cannot be written: retried, then reported, never thrown', async () => {
  // A real client against a port nobody listens on (the emulator, stopped).
  const gone = await startDynamoEmulator();
  await gone.stop();
  const ddb = new DynamoDBClient({
    region: 'us-east-1',
    endpoint: gone.endpoint,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
    maxAttempts: 1,
  });
  const event: RolloutEvent = {
    schemaVersion: 1,
    kind: 'image.put',
    bucket: 'b',
    key: 'images/a.tar',
    versionId: null,
    eTag: 'e',
    size: 1,
    sequencer: '0C',
    eventTime: '2026-11-30T10:00:00.000Z',
  };
  const delays: number[] = [];
  const failed = await recordRollouts([{ event, queueUrls: ['http://x/tr-host-default-a'] }], {
    ddb,
    table: TABLE,
    maxAttempts: 3,
    sleep: (ms) => {
      delays.push(ms);
      return Promise.resolve();
    },
  });
  ddb.destroy();
  assert.equal(delays.length, 2, 'two retries after the first attempt');
  assert.equal(failed.length, 1);
  assert.equal(failed[0]!.key, 'images/a.tar');
  assert.match(failed[0]!.error, /ECONNREFUSED|connect/i);
});
