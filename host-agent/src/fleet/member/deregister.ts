/**
 * `thinrelay agent deregister`: a host leaves the fleet for good. Refused
 * while this state dir's agent runs (the caller holds the agent lock; stop
 * the agent first: its SIGTERM drain finishes the images in flight). Then the HostItem is marked gone (rollouts
 * stop expecting the host at once) and the host's queue and DLQ are deleted
 * (the fan-out stops sending after its discovery TTL). Every step is
 * idempotent: running it again finishes what a failed run left.
 */
import type { SQSClient } from '@aws-sdk/client-sqs';
import type { FleetTable } from '../../../../schema/fleet-table.js';
import { UsageError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { readDeployment } from './fleet-client.js';
import { deleteQueueNamed, hostQueueNames, queueDepth, queueUrlOf } from './host-queues.js';
import type { RegistrationRecord } from './registration-record.js';

export interface DeregisterRequest {
  group: string;
  hostId: string;
  /** This state dir's registration, if any. */
  record: RegistrationRecord | null;
}

export interface DeregisterResult {
  group: string;
  hostId: string;
  /** Whether the fleet table had a HostItem to mark gone. */
  markedGone: boolean;
  queue: { name: string; deleted: boolean; messagesDropped: number | null };
  dlq: { name: string; deleted: boolean; messagesDropped: number | null };
}

export async function deregisterHost(
  table: FleetTable,
  sqs: SQSClient,
  req: DeregisterRequest,
  logger: Logger,
): Promise<DeregisterResult> {
  const { group, hostId, record } = req;
  let namePrefix: string;
  try {
    namePrefix = (await readDeployment(table)).namePrefix;
  } catch (err) {
    if (record === null || !(err instanceof UsageError)) throw err;
    namePrefix = record.namePrefix;
  }
  const names = hostQueueNames({ namePrefix, group, hostId });
  const depth = async (name: string): Promise<number | null> => {
    const url = await queueUrlOf(sqs, name);
    return url === null ? null : queueDepth(sqs, url);
  };
  const [queueMessages, dlqMessages] = await Promise.all([depth(names.queue), depth(names.dlq)]);
  const markedGone = await table.markHostGone(hostId, Date.now());
  logger.info(markedGone ? 'host marked gone' : 'no host item in the fleet table', { hostId });
  // The queue first: the DLQ is its redrive target.
  const queueDeleted = await deleteQueueNamed(sqs, names.queue);
  const dlqDeleted = await deleteQueueNamed(sqs, names.dlq);
  logger.info('host queues deleted', {
    queue: names.queue,
    queueDeleted,
    dlq: names.dlq,
    dlqDeleted,
  });
  return {
    group,
    hostId,
    markedGone,
    queue: { name: names.queue, deleted: queueDeleted, messagesDropped: queueMessages },
    dlq: { name: names.dlq, deleted: dlqDeleted, messagesDropped: dlqMessages },
  };
}
