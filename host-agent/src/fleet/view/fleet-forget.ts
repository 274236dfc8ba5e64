/**
 * `thinrelay fleet forget HOST`: an operator removes a host that will not
 * come back — its queue and DLQ (found by name, as the fan-out discovers
 * them, and from its host item) and every item under its partition, by the
 * table's one host removal (schema/fleet-table.ts, which the sweep uses
 * too). Queues go first: once the queue is gone the fan-out stops sending to
 * it, and a crash midway leaves items (the host item last) that a rerun
 * removes.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  DeleteQueueCommand,
  GetQueueUrlCommand,
  ListQueuesCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { HOST_ID, queueNames, type DeploymentConfigItem } from '../../../../schema/fleet.js';
import { FleetTable, UnprocessedWritesError } from '../../../../schema/fleet-table.js';
import { ExitCode, FleetError, isThinrelayError } from '../../errors.js';
import { isSqsNotFound, mapSqsError } from '../../queue/sqs-errors.js';
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
  const deleteQueues = async (): Promise<void> => {
    for (const url of candidates) {
      if (!(await queueExists(sqs, url))) continue;
      try {
        await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
        queuesDeleted.push(url);
      } catch (err) {
        if (!isSqsNotFound(err)) throw mapSqsError(err, `DeleteQueue ${url}`);
      }
    }
  };
  const table = new FleetTable(opts.dynamo, reader.table);
  let itemsDeleted: number;
  try {
    ({ itemsDeleted } = await table.removeHost({
      hostId,
      itemKeys: keys,
      lastSeenAt: null,
      beforeItems: deleteQueues,
    }));
  } catch (err) {
    if (err instanceof UnprocessedWritesError) {
      throw new FleetError(
        'FLEET_UNREACHABLE',
        `BatchWriteItem: ${err.unprocessed} deletes of host ${hostId} still unprocessed`,
        'run `thinrelay fleet forget` again',
        { cause: err, exitCode: ExitCode.temporary },
      );
    }
    // The queues' errors are mapped already (mapSqsError); the rest are DynamoDB's.
    if (isThinrelayError(err)) throw err;
    throw mapDynamoError(err, reader.table, `removing host ${hostId}`);
  }
  return { host: hostId, queuesDeleted, itemsDeleted };
}
