/**
 * Fleet-table items written directly (as the stack, agents and fan-out
 * Lambda write them), for tests and the fleet benchmark.
 */
import { BatchWriteItemCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  fleetKeys,
  queueNames,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostImageState,
  type HostItem,
  type RolloutItem,
} from '../../schema/fleet.js';
import { toItem, type Plain } from '../../schema/item-codec.js';

export function deploymentConfig(over: Partial<DeploymentConfigItem> = {}): DeploymentConfigItem {
  return {
    ...fleetKeys.config,
    namePrefix: 'thinrelay',
    bucket: 'thinrelay-images',
    imagesPrefix: 'images/',
    imageSuffixes: [],
    routes: {},
    groups: {
      default: {
        maxReceiveCount: 5,
        visibilityTimeoutSeconds: 300,
        retentionDays: 14,
        dlqRetentionDays: 14,
      },
    },
    pools: {},
    staleAfterSeconds: 300,
    sweepAfterSeconds: 86_400,
    ...over,
  };
}

export function hostItem(
  hostId: string,
  over: Partial<HostItem> & { group?: string } = {},
  namePrefix = 'thinrelay',
): HostItem {
  const group = over.group ?? 'default';
  return {
    pk: fleetKeys.hostPk(hostId),
    sk: fleetKeys.hostSk,
    gpk: fleetKeys.hostsGpk,
    gsk: fleetKeys.hostPk(hostId),
    hostId,
    group,
    state: 'live',
    queueUrl: `http://127.0.0.1:1/000000000000/${queueNames.hostQueue(namePrefix, group, hostId)}`,
    dlqUrl: `http://127.0.0.1:1/000000000000/${queueNames.dlq(namePrefix, group, hostId)}`,
    agentVersion: '0.1.0',
    backend: 'loop',
    registeredAt: Date.now() - 3_600_000,
    lastSeenAt: Date.now(),
    pool: null,
    dlqDepth: 0,
    ...over,
  };
}

export function hostImageItem(
  hostId: string,
  key: string,
  state: HostImageState,
  over: Partial<HostImageItem> = {},
): HostImageItem {
  return {
    pk: fleetKeys.hostPk(hostId),
    sk: fleetKeys.imageSk(key),
    gpk: fleetKeys.imageGpk(key),
    gsk: fleetKeys.hostPk(hostId),
    hostId,
    group: 'default',
    key,
    eTag: 'etag-1',
    versionId: null,
    state,
    reasonCode: null,
    message: null,
    updatedAt: Date.now(),
    ...over,
  };
}

export function rolloutItem(
  key: string,
  sequencer: string,
  queues: string[],
  over: Partial<RolloutItem> = {},
): RolloutItem {
  return {
    pk: fleetKeys.rolloutPk(key),
    sk: fleetKeys.rolloutSk(sequencer),
    key,
    kind: 'image.put',
    eTag: 'etag-1',
    sequencer,
    sentAt: Date.now(),
    queues,
    ...over,
  };
}

/** BatchWriteItem in 25s, resending what the table left unprocessed. */
export async function putItems(
  client: DynamoDBClient,
  table: string,
  items: readonly object[],
): Promise<void> {
  for (let i = 0; i < items.length; i += 25) {
    let requests = items.slice(i, i + 25).map((it) => ({
      PutRequest: { Item: toItem(it as { [key: string]: Plain }) },
    }));
    while (requests.length > 0) {
      const out = await client.send(
        new BatchWriteItemCommand({ RequestItems: { [table]: requests } }),
      );
      requests = (out.UnprocessedItems?.[table] ?? []) as typeof requests;
    }
  }
}
