/**
 * The whole thinrelay path on one machine, for the demo and end-to-end tests:
 * an S3 emulator (s3rver) whose object events go into the real fan-out
 * Lambda handler, and an SQS emulator (local-aws-sqs) with a queue and a DLQ
 * per host, named as the CDK stack names them.
 *
 * s3rver quirks bridged here (never in production code): its event keys are
 * not URL-encoded as S3's are, and its sequencer is a millisecond timestamp.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  SQSClient,
  SetQueueAttributesCommand,
} from '@aws-sdk/client-sqs';
import type { S3Event } from 'aws-lambda';
import { createSqsServer } from 'local-aws-sqs';
import S3rver from 's3rver';
import { createS3Client } from '../source/s3-client.js';

export const LOCAL_REGION = 'us-east-1';
export const HOST_QUEUE_PREFIX = 'thinrelay-host-';

export interface LocalHost {
  name: string;
  queueUrl: string;
  dlqUrl: string;
}

export interface LocalStackOptions {
  bucket: string;
  hosts: string[];
  /** Receives before a message moves to its host's DLQ. */
  maxReceiveCount: number;
  /** Called with each fan-out invocation's outcome (the demo prints it). */
  onFanout?: (info: { key: string; eventName: string; error?: unknown }) => void;
}

export interface LocalStack {
  bucket: string;
  hosts: LocalHost[];
  s3Endpoint: string;
  sqsEndpoint: string;
  s3: S3Client;
  sqs: SQSClient;
  /** Environment for an agent or the CLI: endpoints, credentials, region. */
  env: Record<string, string>;
  /** Resolves when every fan-out invocation started so far has finished. */
  fanoutIdle(): Promise<void>;
  stop(): Promise<void>;
}

/** S3 notifications URL-encode keys with '+' for spaces; s3rver sends them raw. */
function encodeKeyLikeS3(key: string): string {
  return encodeURIComponent(key).replace(/%20/g, '+').replace(/%2F/g, '/');
}

export async function startLocalStack(opts: LocalStackOptions): Promise<LocalStack> {
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-stack-'));
  const s3rver = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory: join(work, 's3'),
  });
  const { port: s3Port } = await s3rver.run();
  const sqsServer = await createSqsServer({
    port: 0,
    hostname: '127.0.0.1',
    region: LOCAL_REGION,
    emulateQueueCreationLifecycle: false,
  });
  const s3Endpoint = `http://127.0.0.1:${s3Port}`;
  const sqsEndpoint = `http://127.0.0.1:${(sqsServer.address() as AddressInfo).port}`;
  const env = {
    AWS_ENDPOINT_URL_S3: s3Endpoint,
    AWS_ENDPOINT_URL_SQS: sqsEndpoint,
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_REGION: LOCAL_REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
  };
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const s3 = createS3Client({
    endpoint: s3Endpoint,
    forcePathStyle: true,
    region: LOCAL_REGION,
    credentials,
  });
  const sqs = new SQSClient({ region: LOCAL_REGION, endpoint: sqsEndpoint, credentials });
  await s3.send(new CreateBucketCommand({ Bucket: opts.bucket }));
  const hosts: LocalHost[] = [];
  for (const name of opts.hosts)
    hosts.push(await createHostQueues(sqs, name, opts.maxReceiveCount));

  // The Lambda's configuration, as the CDK stack sets it; the handler reads
  // it (and the SQS endpoint) from the environment on first invocation.
  Object.assign(process.env, env, {
    HOST_QUEUE_PREFIX,
    IMAGE_BUCKETS: opts.bucket,
    IMAGE_PREFIX: 'images/',
    QUEUE_DISCOVERY_TTL_SECONDS: '1',
    POWERTOOLS_LOG_LEVEL: process.env.POWERTOOLS_LOG_LEVEL ?? 'ERROR',
    POWERTOOLS_METRICS_DISABLED: 'true',
  });
  const { handleNotification } = await import('../../../lambda/src/handler.js');
  const pending = new Set<Promise<void>>();
  s3rver.on('event', (event: S3Event) => {
    for (const r of event.Records) r.s3.object.key = encodeKeyLikeS3(r.s3.object.key);
    const record = event.Records[0];
    const info = { key: record?.s3.object.key ?? '', eventName: record?.eventName ?? '' };
    // Lambda's async invocation: the event is retried twice on failure.
    const p = invokeWithRetries(() => handleNotification(event), 3)
      .then(() => opts.onFanout?.(info))
      .catch((error: unknown) => opts.onFanout?.({ ...info, error }))
      .finally(() => pending.delete(p));
    pending.add(p);
  });

  let stopped = false;
  return {
    bucket: opts.bucket,
    hosts,
    s3Endpoint,
    sqsEndpoint,
    s3,
    sqs,
    env,
    fanoutIdle: async () => {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.allSettled([...pending]);
      s3.destroy();
      sqs.destroy();
      sqsServer.closeAllConnections();
      await new Promise<void>((resolve) => sqsServer.close(() => resolve()));
      const closing = s3rver.close();
      s3rver.httpServer?.closeAllConnections();
      await closing;
      rmSync(work, { recursive: true, force: true });
    },
  };
}

async function invokeWithRetries(fn: () => Promise<void>, attempts: number): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      await fn();
      return;
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 200 * i));
    }
  }
}

/** thinrelay-host-<group>-<host> with thinrelay-dlq-<group>-<host>, as infra/ creates them. */
async function createHostQueues(
  sqs: SQSClient,
  name: string,
  maxReceiveCount: number,
): Promise<LocalHost> {
  const dlq = await sqs.send(
    new CreateQueueCommand({ QueueName: `thinrelay-dlq-default-${name}` }),
  );
  const dlqArn = (
    await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl, AttributeNames: ['QueueArn'] }),
    )
  ).Attributes!.QueueArn!;
  const queue = await sqs.send(
    new CreateQueueCommand({ QueueName: `${HOST_QUEUE_PREFIX}default-${name}` }),
  );
  await sqs.send(
    new SetQueueAttributesCommand({
      QueueUrl: queue.QueueUrl,
      Attributes: {
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount }),
      },
    }),
  );
  return { name, queueUrl: queue.QueueUrl!, dlqUrl: dlq.QueueUrl! };
}
