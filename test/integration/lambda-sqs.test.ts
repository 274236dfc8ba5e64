/**
 * The real fan-out handler against an in-process SQS emulator (local-aws-sqs
 * 2.x): discovery by prefix, one message per host queue, bodies that parse
 * with the shared schema. The SDK finds the emulator through
 * AWS_ENDPOINT_URL_SQS, exactly as it would find a real endpoint override.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import {
  CreateQueueCommand,
  ReceiveMessageCommand,
  SQSClient,
  type Message,
} from '@aws-sdk/client-sqs';
import type { Context, S3Event } from 'aws-lambda';
import { createSqsServer } from 'local-aws-sqs';
import { parseImageEvent } from '../../schema/image-event.js';

const REGION = 'us-east-1';

test('an S3 put notification reaches every host queue as a valid image event', async (t) => {
  // Port 0: the emulator reads back the real port for its queue URLs.
  const server = await createSqsServer({
    port: 0,
    hostname: '127.0.0.1',
    region: REGION,
    emulateQueueCreationLifecycle: false,
  });
  const sqs = new SQSClient({
    region: REGION,
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
  });
  t.after(async () => {
    sqs.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const hostQueues: string[] = [];
  for (const name of ['tr-host-web-1', 'tr-host-web-2', 'tr-host-gpu-1']) {
    const out = await sqs.send(new CreateQueueCommand({ QueueName: name }));
    assert.ok(out.QueueUrl);
    hostQueues.push(out.QueueUrl);
  }
  const other = await sqs.send(new CreateQueueCommand({ QueueName: 'unrelated-queue' }));
  assert.ok(other.QueueUrl);

  // The handler's module reads its environment when loaded and first invoked.
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_SQS: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_REGION: REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
    HOST_QUEUE_PREFIX: 'tr-host-',
    IMAGE_PREFIX: 'images/',
    IMAGE_SUFFIXES: '.tar,.tar.gz',
    POWERTOOLS_LOG_LEVEL: 'WARN',
    // What Lambda sets for an on-demand environment: Powertools' cold-start detection reads it.
    AWS_LAMBDA_INITIALIZATION_TYPE: 'on-demand',
  });
  const { handler } = await import('../../lambda/src/handler.js');
  // Powertools writes logs and EMF metrics to the console: capture this invocation's
  const context = {
    awsRequestId: 'req-0001',
    functionName: 'thinrelay-fanout',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:thinrelay-fanout',
    memoryLimitInMB: '256',
  } as Context;
  const skippedRecord = s3PutNotification().Records[0]!;
  const notification: S3Event = {
    Records: [
      ...s3PutNotification().Records,
      {
        ...skippedRecord,
        s3: {
          ...skippedRecord.s3,
          object: { ...skippedRecord.s3.object, key: 'images/notes.txt' },
        },
      },
    ],
  };
  // (warnings and errors go to stderr, the rest to stdout).
  const out: string[] = [];
  const writes = [process.stdout, process.stderr].map((stream) => {
    const write = stream.write.bind(stream);
    stream.write = (chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    };
    return () => (stream.write = write);
  });
  try {
    await handler(notification, context, () => undefined);
  } finally {
    for (const restore of writes) restore();
  }
  const lines = out
    .join('')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  // The skipped record: a warning with its reason, the request id and cold start…
  const warning = lines.find((l) => l.message === 'record skipped');
  assert.ok(warning, out.join(''));
  assert.equal(warning.level, 'WARN');
  assert.equal(warning.reason, 'SUFFIX_NOT_CONFIGURED');
  assert.equal(warning.function_request_id, 'req-0001');
  assert.equal(warning.cold_start, true);
  // …and a metric per reason (EMF), next to the total and the cold start.
  const emf = lines.filter((l) => '_aws' in l);
  assert.ok(
    emf.some((l) => l.reason === 'SUFFIX_NOT_CONFIGURED' && l.RecordsSkipped === 1),
    JSON.stringify(emf),
  );
  assert.ok(emf.some((l) => l.ColdStart === 1));
  assert.ok(emf.some((l) => l.RecordsSkipped === 1 && l.EventsReceived === 1));

  for (const url of hostQueues) {
    const messages = await receiveAll(sqs, url);
    assert.equal(messages.length, 1, `one message on ${url}`);
    const event = parseImageEvent(messages[0]?.Body ?? '');
    assert.deepEqual(event, {
      schemaVersion: 1,
      kind: 'image.put',
      bucket: 'thinrelay-images',
      key: 'images/web server+1 ü.tar.gz',
      versionId: '096fKKXTRTtl3on89fVO.nfljtsv6qko',
      eTag: 'd41d8cd98f00b204e9800998ecf8427e',
      size: 1048576,
      sequencer: '0055AED6DCD90281E5',
      eventTime: '2026-11-23T10:15:30.123Z',
    });
    assert.equal(messages[0]?.MessageAttributes?.kind?.StringValue, 'image.put');
    assert.equal(messages[0]?.MessageAttributes?.key?.StringValue, event.key);
  }
  assert.deepEqual(await receiveAll(sqs, other.QueueUrl), [], 'non-host queue untouched');
});

async function receiveAll(sqs: SQSClient, url: string): Promise<Message[]> {
  const out = await sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: url,
      MaxNumberOfMessages: 10,
      // The handler has returned, so the messages are there; the emulator would
      // wait out any long poll hoping to fill MaxNumberOfMessages.
      WaitTimeSeconds: 0,
      MessageAttributeNames: ['All'],
    }),
  );
  return out.Messages ?? [];
}

/** What S3 sends for a versioned PutObject of "images/web server+1 ü.tar.gz". */
function s3PutNotification(): S3Event {
  return {
    Records: [
      {
        eventVersion: '2.1',
        eventSource: 'aws:s3',
        awsRegion: REGION,
        eventTime: '2026-11-23T10:15:30.123Z',
        eventName: 'ObjectCreated:Put',
        userIdentity: { principalId: 'AWS:AIDAJDPLRKLG7UEXAMPLE' },
        requestParameters: { sourceIPAddress: '203.0.113.15' },
        responseElements: {
          'x-amz-request-id': 'C3D13FE58DE4C810',
          'x-amz-id-2': 'FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD',
        },
        s3: {
          s3SchemaVersion: '1.0',
          configurationId: 'thinrelay-images',
          bucket: {
            name: 'thinrelay-images',
            ownerIdentity: { principalId: 'A3NL1KOZZKExample' },
            arn: 'arn:aws:s3:::thinrelay-images',
          },
          object: {
            key: 'images/web+server%2B1+%C3%BC.tar.gz',
            size: 1048576,
            eTag: 'd41d8cd98f00b204e9800998ecf8427e',
            versionId: '096fKKXTRTtl3on89fVO.nfljtsv6qko',
            sequencer: '0055AED6DCD90281E5',
          },
        },
      },
    ],
  };
}
