/**
 * `thinrelay fleet forget HOST`: an operator removes a host that will not
 * come back — its queue and DLQ (found by name, as the fan-out discovers
 * them, and from its host item) and every item under its partition. Queues
 * go first: once the queue is gone the fan-out stops sending to it, and a
 * crash midway leaves items that a rerun removes.
 */
import { BatchWriteItemCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  DeleteQueueCommand,
  GetQueueUrlCommand,
  ListQueuesCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { HOST_ID, queueNames, type DeploymentConfigItem } from '../../../schema/fleet.js';
import { ExitCode, FleetError } from '../errors.js';
import { isSqsNotFound, mapSqsError } from '../queue/sqs-errors.js';
import { toItem } from '../../../schema/item-codec.js';
import { mapDynamoError, type FleetReader } from './fleet-reader.js';
import { liveness } from './fleet-view.js';

export interface ForgetResult {
  host: string;
  queuesDeleted: string[];
  itemsDeleted: number;
}

async function listQueues(sqs: SQSClient, prefix: string): Promise<string[]> {
  const urls: string[] = [];
  let NextToken: string | undefined;
  do {
    let out;
    try {
      out = await sqs.send(
        new ListQueuesCommand({ QueueNamePrefix: prefix, MaxResults: 1000, NextToken }),
      );
    } catch (err) {
      throw mapSqsError(err, `ListQueues ${prefix}`);
    }
    urls.push(...(out.QueueUrls ?? []));
    NextToken = out.NextToken;
  } while (NextToken !== undefined);
  return urls;
}

/** The host's queue and DLQ in every group (a host id is unique in the fleet). */
async function hostQueues(
  sqs: SQSClient,
  namePrefix: string,
  hostId: string,
  known: readonly string[],
): Promise<string[]> {
  const found = new Set(known.filter((u) => u !== ''));
  for (const prefix of [queueNames.hostQueuePrefix(namePrefix), queueNames.dlqPrefix(namePrefix)]) {
    for (const url of await listQueues(sqs, prefix)) {
      const name = url.slice(url.lastIndexOf('/') + 1);
      if (name.startsWith(prefix) && name.slice(prefix.length).endsWith(`-${hostId}`)) {
        const group = name.slice(prefix.length, name.length - hostId.length - 1);
        if (/^[A-Za-z0-9_]+$/.test(group)) found.add(url);
      }
    }
  }
  return [...found].sort();
}

async function queueExists(sqs: SQSClient, url: string): Promise<boolean> {
  try {
    await sqs.send(new GetQueueUrlCommand({ QueueName: url.slice(url.lastIndexOf('/') + 1) }));
    return true;
  } catch (err) {
    if (isSqsNotFound(err)) return false;
    throw mapSqsError(err, `GetQueueUrl ${url}`);
  }
}

export async function forgetHost(opts: {
  hostId: string;
  force: boolean;
  reader: FleetReader;
  dynamo: DynamoDBClient;
  sqs: SQSClient;
  config: DeploymentConfigItem;
  now: number;
}): Promise<ForgetResult> {
  const { hostId, reader, sqs, config } = opts;
  if (!HOST_ID.test(hostId)) {
    throw new FleetError('HOST_NOT_FOUND', `not a host id: ${JSON.stringify(hostId)}`, undefined, {
      exitCode: ExitCode.usage,
    });
  }
  const host = await reader.host(hostId);
  if (
    host !== null &&
    liveness(host, config.staleAfterSeconds, opts.now) === 'live' &&
    !opts.force
  ) {
    throw new FleetError(
      'HOST_LIVE',
      `host ${hostId} is live (seen ${Math.round((opts.now - host.lastSeenAt) / 1000)} s ago): its agent would register it again`,
      'stop its agent (or run `thinrelay agent deregister` on it) first; --force forgets it anyway',
      { exitCode: ExitCode.usage },
    );
  }
  const candidates = await hostQueues(
    sqs,
    config.namePrefix,
    hostId,
    host === null ? [] : [host.queueUrl, host.dlqUrl],
  );
  const keys = await reader.hostPartitionKeys(hostId);
  if (host === null && keys.length === 0 && candidates.length === 0) {
    throw new FleetError(
      'HOST_NOT_FOUND',
      `no host ${hostId} in the fleet table "${reader.table}" and no queues named for it`,
      '`thinrelay fleet hosts` lists the hosts',
      { exitCode: ExitCode.notFound },
    );
  }

  const queuesDeleted: string[] = [];
  for (const url of candidates) {
    if (!(await queueExists(sqs, url))) continue;
    try {
      await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
      queuesDeleted.push(url);
    } catch (err) {
      if (!isSqsNotFound(err)) throw mapSqsError(err, `DeleteQueue ${url}`);
    }
  }

  // BatchWriteItem takes 25 deletes; unprocessed ones are sent again.
  let itemsDeleted = 0;
  for (let i = 0; i < keys.length; i += 25) {
    let requests = keys
      .slice(i, i + 25)
      .map((k) => ({ DeleteRequest: { Key: toItem({ pk: k.pk, sk: k.sk }) } }));
    for (let attempt = 0; requests.length > 0; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempt)));
      if (attempt > 8) {
        throw new FleetError(
          'FLEET_UNREACHABLE',
          `BatchWriteItem: ${requests.length} deletes of host ${hostId} still unprocessed`,
          'run `thinrelay fleet forget` again',
          { exitCode: ExitCode.temporary },
        );
      }
      let out;
      try {
        out = await opts.dynamo.send(
          new BatchWriteItemCommand({ RequestItems: { [reader.table]: requests } }),
        );
      } catch (err) {
        throw mapDynamoError(err, reader.table, `BatchWriteItem host ${hostId}`);
      }
      const left = (out.UnprocessedItems?.[reader.table] ?? []) as typeof requests;
      itemsDeleted += requests.length - left.length;
      requests = left;
    }
  }
  return { host: hostId, queuesDeleted, itemsDeleted };
}
