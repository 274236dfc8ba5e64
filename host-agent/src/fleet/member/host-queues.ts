/**
 * A group host's own SQS queues, as the stack used to make them per host:
 * a DLQ (longer retention, redrive allowed only back to its source) and the
 * host queue (retention, visibility, long polling, redrive to the DLQ after
 * maxReceiveCount receives), both with SQS-managed encryption and tagged with
 * group and host. Named by schema/fleet.ts, which is how the fan-out Lambda
 * finds them. ensure is idempotent: it creates what is missing and sets the
 * group's current settings on what exists.
 */
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  SetQueueAttributesCommand,
  TagQueueCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { queueNames, type GroupQueueSettings } from '../../../../schema/fleet.js';
import { isSqsNotFound, sqsErrorFacts } from '../../queue/sqs-errors.js';
import { EnvironmentError, TemporaryEnvironmentError } from '../../errors.js';

export const QUEUE_TAGS = { group: 'thinrelay:group', host: 'thinrelay:host' } as const;
const DAY = 86_400;
/** SQS's longest retention. */
const MAX_RETENTION_SECONDS = 14 * DAY;

export interface HostQueueSpec {
  namePrefix: string;
  group: string;
  hostId: string;
}

export interface HostQueueUrls {
  queueUrl: string;
  dlqUrl: string;
}

export function hostQueueNames(spec: HostQueueSpec): { queue: string; dlq: string } {
  return {
    queue: queueNames.hostQueue(spec.namePrefix, spec.group, spec.hostId),
    dlq: queueNames.dlq(spec.namePrefix, spec.group, spec.hostId),
  };
}

const retention = (days: number): string => String(Math.min(MAX_RETENTION_SECONDS, days * DAY));

export async function ensureHostQueues(
  sqs: SQSClient,
  spec: HostQueueSpec,
  settings: GroupQueueSettings,
): Promise<HostQueueUrls> {
  const names = hostQueueNames(spec);
  const tags = { [QUEUE_TAGS.group]: spec.group, [QUEUE_TAGS.host]: spec.hostId };
  // The DLQ first: the host queue's redrive policy names its ARN. The source
  // queue's ARN (for the DLQ's redrive-allow policy) is the same ARN but the name.
  const dlqUrl = await ensureQueue(sqs, names.dlq, tags, {
    MessageRetentionPeriod: retention(settings.dlqRetentionDays),
    SqsManagedSseEnabled: 'true',
  });
  const dlqArn = await queueArn(sqs, dlqUrl);
  const sourceArn = dlqArn.slice(0, dlqArn.lastIndexOf(':') + 1) + names.queue;
  await sqs.send(
    new SetQueueAttributesCommand({
      QueueUrl: dlqUrl,
      Attributes: {
        RedriveAllowPolicy: JSON.stringify({
          redrivePermission: 'byQueue',
          sourceQueueArns: [sourceArn],
        }),
      },
    }),
  );
  const queueUrl = await ensureQueue(sqs, names.queue, tags, {
    MessageRetentionPeriod: retention(settings.retentionDays),
    VisibilityTimeout: String(settings.visibilityTimeoutSeconds),
    ReceiveMessageWaitTimeSeconds: '20',
    SqsManagedSseEnabled: 'true',
    RedrivePolicy: JSON.stringify({
      deadLetterTargetArn: dlqArn,
      maxReceiveCount: settings.maxReceiveCount,
    }),
  });
  return { queueUrl, dlqUrl };
}

/** Create the queue, or bring an existing one to these attributes and tags. */
async function ensureQueue(
  sqs: SQSClient,
  name: string,
  tags: Record<string, string>,
  attributes: Record<string, string>,
): Promise<string> {
  const existing = await queueUrlOf(sqs, name);
  if (existing === null) {
    try {
      const out = await sqs.send(
        new CreateQueueCommand({ QueueName: name, Attributes: attributes, tags }),
      );
      return out.QueueUrl!;
    } catch (err) {
      // Created meanwhile with other attributes (another start racing this one): converge it.
      if (!isQueueAlreadyExists(err)) throw err;
    }
  }
  const url = existing ?? (await queueUrlOf(sqs, name));
  if (url === null)
    // Deleted between the create's refusal and this lookup: the next start converges it.
    throw new TemporaryEnvironmentError(
      'QUEUE_REQUEST_FAILED',
      `queue ${name} exists and does not: SQS answered both (deleted meanwhile?)`,
    );
  await sqs.send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: attributes }));
  await sqs.send(new TagQueueCommand({ QueueUrl: url, Tags: tags }));
  return url;
}

function isQueueAlreadyExists(err: unknown): boolean {
  const f = sqsErrorFacts(err);
  return [f.name, f.awsCode].some(
    (c) =>
      c === 'QueueAlreadyExists' ||
      c === 'QueueNameExists' ||
      c === 'AWS.SimpleQueueService.QueueNameExists',
  );
}

export async function queueUrlOf(sqs: SQSClient, name: string): Promise<string | null> {
  try {
    return (await sqs.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl ?? null;
  } catch (err) {
    if (isSqsNotFound(err)) return null;
    throw err;
  }
}

async function queueArn(sqs: SQSClient, url: string): Promise<string> {
  const out = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }),
  );
  const arn = out.Attributes?.QueueArn;
  if (arn === undefined)
    throw new EnvironmentError('QUEUE_REQUEST_FAILED', `SQS returned no QueueArn for ${url}`);
  return arn;
}

/** Messages waiting (visible + in flight + delayed); null if the queue is gone. */
export async function queueDepth(sqs: SQSClient, url: string): Promise<number | null> {
  try {
    const out = await sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: url,
        AttributeNames: [
          'ApproximateNumberOfMessages',
          'ApproximateNumberOfMessagesNotVisible',
          'ApproximateNumberOfMessagesDelayed',
        ],
      }),
    );
    const a = out.Attributes ?? {};
    return (
      Number(a.ApproximateNumberOfMessages ?? 0) +
      Number(a.ApproximateNumberOfMessagesNotVisible ?? 0) +
      Number(a.ApproximateNumberOfMessagesDelayed ?? 0)
    );
  } catch (err) {
    if (isSqsNotFound(err)) return null;
    throw err;
  }
}

/** Delete a queue by name; false if it did not exist. */
export async function deleteQueueNamed(sqs: SQSClient, name: string): Promise<boolean> {
  const url = await queueUrlOf(sqs, name);
  if (url === null) return false;
  try {
    await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
    return true;
  } catch (err) {
    if (isSqsNotFound(err)) return false;
    throw err;
  }
}
