/**
 * Signature sidecars through the real fan-out handler, SQS and DynamoDB
 * emulators on 127.0.0.1: a sidecar's upload reaches exactly the hosts its
 * image goes to (route by the image key, the image's suffix rule) as a
 * `sidecar.put` message; it is never recorded as a rollout; its deletion is
 * not sent at all.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import type { Context, S3Event } from 'aws-lambda';
import { queueNames } from '../../schema/fleet.js';
import { parseImageEvent } from '../../schema/image-event.js';
import { fromItem } from '../../schema/item-codec.js';
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

function record(eventName: string, key: string, sequencer: string) {
  const put = eventName.startsWith('ObjectCreated');
  return {
    eventName,
    eventTime: '2026-12-06T23:00:00.000Z',
    s3: {
      bucket: { name: 'images-bucket' },
      object: put ? { key, size: 96, eTag: `etag-${sequencer}`, sequencer } : { key, sequencer },
    },
  };
}

test('a sidecar goes to its image hosts as sidecar.put, is no rollout, and its deletion is not sent', async () => {
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
    // The image's suffix rule: `.sig` and `.sigstore.json` are not listed, and need not be.
    IMAGE_SUFFIXES: '.tar',
    FLEET_TABLE: TABLE,
    POWERTOOLS_LOG_LEVEL: 'ERROR',
    POWERTOOLS_METRICS_DISABLED: 'true',
  });
  const { handler } = await import('../../lambda/src/handler.js');
  const notification = {
    Records: [
      record('ObjectCreated:Put', 'images/gpu/cuda.tar', '0A'),
      record('ObjectCreated:Put', 'images/gpu/cuda.tar.sig', '0B'),
      record('ObjectCreated:Put', 'images/base.tar.sigstore.json', '0C'),
      record('ObjectRemoved:Delete', 'images/gpu/cuda.tar.sig', '0D'),
      // The sidecar of a key that is no image here (suffix rule) is not sent either.
      record('ObjectCreated:Put', 'images/readme.txt.sig', '0E'),
    ],
  } as unknown as S3Event;
  await handler(notification, {} as Context, () => undefined);

  const bodies = async (url: string) =>
    (await sqs.receiveNow(url, 30))
      .map((m) => parseImageEvent(m.body))
      .map((e) => `${e.kind} ${e.key} ${e.eTag}`)
      .sort();
  assert.deepEqual(await bodies(gpu.url), [
    'image.put images/gpu/cuda.tar etag-0A',
    'sidecar.put images/base.tar.sigstore.json etag-0C',
    'sidecar.put images/gpu/cuda.tar.sig etag-0B',
  ]);
  // The GPU image's sidecar follows its image's route: not to the web host.
  assert.deepEqual(await bodies(web.url), ['sidecar.put images/base.tar.sigstore.json etag-0C']);

  const out = await dynamo.client.send(new ScanCommand({ TableName: TABLE }));
  const rollouts = (out.Items ?? [])
    .map((i) => fromItem(i) as { kind: string; key: string })
    .map((i) => `${i.kind} ${i.key}`);
  assert.deepEqual(rollouts, ['image.put images/gpu/cuda.tar']);
});
