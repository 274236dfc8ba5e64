/**
 * The whole AWS side of thinrelay on one machine, for `npm run stack`, the
 * demo and end-to-end tests: an S3 emulator (s3rver) whose object events go
 * into the real fan-out Lambda handler, an SQS emulator (local-aws-sqs), and
 * a DynamoDB emulator (dynalite) holding the fleet table with its deployment
 * item, as the CDK stack sets them up. Agents register their own queues; the
 * `hosts` option pre-creates queues for hosts that don't (the old demo path).
 *
 * s3rver quirks bridged here (never in production code): its event keys are
 * not URL-encoded as S3's are, its sequencer is a millisecond timestamp, and
 * its CopyObject event carries no ETag (filled in with HeadObject).
 * CompleteMultipartUpload does emit an event (ObjectCreated:Post, with the
 * whole object's MD5 as ETag, which is what GetObject returns).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  SQSClient,
  SetQueueAttributesCommand,
} from '@aws-sdk/client-sqs';
import type { S3Event } from 'aws-lambda';
import { createSqsServer } from 'local-aws-sqs';
import S3rver from 's3rver';
import {
  fleetKeys,
  queueNames,
  type DeploymentConfigItem,
  type GroupQueueSettings,
} from '../../../schema/fleet.js';
import { createFleetTable, startDynamoEmulator } from '../../../test/helpers/dynamo-emulator.js';
import { normalizeETag } from '../../../schema/etag.js';
import { FleetTable } from '../../../schema/fleet-table.js';
import { createS3Client } from '../source/s3-client.js';

type HandlerModule = typeof import('../../../lambda/src/handler.js');
let stacksStarted = 0;

export const LOCAL_REGION = 'us-east-1';
export const NAME_PREFIX = 'thinrelay';
export const HOST_QUEUE_PREFIX = queueNames.hostQueuePrefix(NAME_PREFIX);
export const IMAGES_PREFIX = 'images/';

export interface LocalHost {
  name: string;
  queueUrl: string;
  dlqUrl: string;
}

export interface LocalStackOptions {
  bucket: string;
  /** Hosts (group `default`) whose queues the stack creates; agents that register need none. */
  hosts?: string[];
  /** Receives before a message moves to its host's DLQ. */
  maxReceiveCount: number;
  /** Host groups, each routed `images/` (default: one group, `default`). */
  groups?: string[];
  fleetTable?: string;
  /** A host not seen for this long is stale (the deployment item's staleAfterSeconds). */
  staleAfterSeconds?: number;
  /** Called with each fan-out invocation's outcome (the demo prints it). */
  onFanout?: (info: { key: string; eventName: string; error?: unknown }) => void;
}

export interface LocalStack {
  bucket: string;
  hosts: LocalHost[];
  s3Endpoint: string;
  sqsEndpoint: string;
  dynamoEndpoint: string;
  fleetTable: string;
  deployment: DeploymentConfigItem;
  s3: S3Client;
  sqs: SQSClient;
  dynamo: DynamoDBClient;
  /** The first group: what `npm run stack` exports as THINRELAY_GROUP. */
  group: string;
  /**
   * Environment for an agent or the CLI: endpoints, credentials, region,
   * bucket, table. No group: an agent given --queue-url must not have one.
   */
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
  const dynamoEmulator = await startDynamoEmulator();
  const s3Endpoint = `http://127.0.0.1:${s3Port}`;
  const sqsEndpoint = `http://127.0.0.1:${(sqsServer.address() as AddressInfo).port}`;
  const fleetTable = opts.fleetTable ?? `${NAME_PREFIX}-fleet`;
  const groups = opts.groups ?? ['default'];
  const env = {
    AWS_ENDPOINT_URL_S3: s3Endpoint,
    AWS_ENDPOINT_URL_SQS: sqsEndpoint,
    AWS_ENDPOINT_URL_DYNAMODB: dynamoEmulator.endpoint,
    // s3rver accepts only this key pair; SQS and DynamoDB emulators accept any.
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_REGION: LOCAL_REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
    THINRELAY_BUCKET: opts.bucket,
    THINRELAY_FLEET_TABLE: fleetTable,
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
  for (const name of opts.hosts ?? [])
    hosts.push(await createHostQueues(sqs, name, opts.maxReceiveCount));

  // The fleet table and its deployment item, as the stack writes them.
  const settings: GroupQueueSettings = {
    maxReceiveCount: opts.maxReceiveCount,
    visibilityTimeoutSeconds: 300,
    retentionDays: 14,
    dlqRetentionDays: 14,
  };
  const deployment: DeploymentConfigItem = {
    ...fleetKeys.config,
    namePrefix: NAME_PREFIX,
    bucket: opts.bucket,
    imagesPrefix: IMAGES_PREFIX,
    imageSuffixes: [],
    routes: { [IMAGES_PREFIX]: groups },
    groups: Object.fromEntries(groups.map((g) => [g, settings])),
    pools: {},
    staleAfterSeconds: opts.staleAfterSeconds ?? 180,
    sweepAfterSeconds: 86_400,
  };
  await createFleetTable(dynamoEmulator.client, fleetTable);
  await new FleetTable(dynamoEmulator.client, fleetTable).putDeployment(deployment);

  // The Lambda's configuration, as the CDK stack sets it; the handler reads
  // it (and the SQS and DynamoDB endpoints) from the environment on first invocation.
  Object.assign(process.env, env, {
    HOST_QUEUE_PREFIX,
    ROUTES: JSON.stringify(deployment.routes),
    FLEET_TABLE: fleetTable,
    IMAGE_BUCKETS: opts.bucket,
    IMAGE_PREFIX: IMAGES_PREFIX,
    QUEUE_DISCOVERY_TTL_SECONDS: '1',
    POWERTOOLS_LOG_LEVEL: process.env.POWERTOOLS_LOG_LEVEL ?? 'ERROR',
    POWERTOOLS_METRICS_DISABLED: 'true',
  });
  // A fresh handler module per stack, as a new Lambda container loads it: the
  // handler keeps its configuration and clients for the life of its module.
  const handlerUrl = new URL('../../../lambda/src/handler.js', import.meta.url);
  handlerUrl.search = `stack=${++stacksStarted}`;
  const { handleNotification } = (await import(handlerUrl.href)) as HandlerModule;
  const pending = new Set<Promise<void>>();
  s3rver.on('event', (event: S3Event) => {
    const record = event.Records[0];
    const info = { key: record?.s3.object.key ?? '', eventName: record?.eventName ?? '' };
    // Lambda's async invocation: the event is retried twice on failure.
    const p = fillMissingETags(s3, event)
      .then(() => {
        for (const r of event.Records) r.s3.object.key = encodeKeyLikeS3(r.s3.object.key);
      })
      .then(() => invokeWithRetries(() => handleNotification(event), 3))
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
    dynamoEndpoint: dynamoEmulator.endpoint,
    fleetTable,
    group: groups[0]!,
    deployment,
    s3,
    sqs,
    dynamo: dynamoEmulator.client,
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
      await dynamoEmulator.stop();
      rmSync(work, { recursive: true, force: true });
    },
  };
}

/** s3rver's CopyObject event has no ETag (S3's has): read it from the object. */
async function fillMissingETags(s3: S3Client, event: S3Event): Promise<void> {
  for (const r of event.Records) {
    if (!r.eventName.startsWith('ObjectCreated:') || r.s3.object.eTag) continue;
    try {
      const head = await s3.send(
        new HeadObjectCommand({ Bucket: r.s3.bucket.name, Key: r.s3.object.key }),
      );
      r.s3.object.eTag = head.ETag === undefined ? '' : normalizeETag(head.ETag);
      r.s3.object.size = head.ContentLength ?? r.s3.object.size;
    } catch {
      // Gone again already: the handler rejects the record, as it would S3's.
    }
  }
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
    new CreateQueueCommand({ QueueName: queueNames.dlq(NAME_PREFIX, 'default', name) }),
  );
  const dlqArn = (
    await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl, AttributeNames: ['QueueArn'] }),
    )
  ).Attributes!.QueueArn!;
  const queue = await sqs.send(
    new CreateQueueCommand({ QueueName: queueNames.hostQueue(NAME_PREFIX, 'default', name) }),
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
