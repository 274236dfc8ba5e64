/**
 * The fleet table's deployment item as the stack writes it, for tests that
 * run group agents against dynalite; and reading items back.
 */
import { GetItemCommand, PutItemCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  fleetKeys,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostItem,
} from '../../schema/fleet.js';
import { fromItem, toItem, type Plain } from '../../schema/item-codec.js';

export function deploymentItem(
  over: Partial<DeploymentConfigItem> & { bucket: string },
): DeploymentConfigItem {
  return {
    pk: 'CONFIG',
    sk: 'DEPLOYMENT',
    namePrefix: 'tr',
    imagesPrefix: 'images/',
    imageSuffixes: [],
    routes: {},
    groups: {
      default: {
        maxReceiveCount: 100,
        visibilityTimeoutSeconds: 120,
        retentionDays: 4,
        dlqRetentionDays: 14,
      },
    },
    pools: {},
    staleAfterSeconds: 600,
    sweepAfterSeconds: 3600,
    ...over,
  };
}

export async function writeDeployment(
  client: DynamoDBClient,
  table: string,
  item: DeploymentConfigItem,
): Promise<void> {
  await client.send(
    new PutItemCommand({
      TableName: table,
      Item: toItem(item as unknown as Record<string, Plain>),
    }),
  );
}

async function getItem(
  client: DynamoDBClient,
  table: string,
  pk: string,
  sk: string,
): Promise<Record<string, Plain> | undefined> {
  const out = await client.send(
    new GetItemCommand({ TableName: table, Key: toItem({ pk, sk }), ConsistentRead: true }),
  );
  return out.Item === undefined ? undefined : fromItem(out.Item);
}

export async function readHostItem(
  client: DynamoDBClient,
  table: string,
  hostId: string,
): Promise<HostItem | undefined> {
  return (await getItem(client, table, fleetKeys.hostPk(hostId), fleetKeys.hostSk)) as
    HostItem | undefined;
}

export async function readHostImageItem(
  client: DynamoDBClient,
  table: string,
  hostId: string,
  key: string,
): Promise<HostImageItem | undefined> {
  return (await getItem(client, table, fleetKeys.hostPk(hostId), fleetKeys.imageSk(key))) as
    HostImageItem | undefined;
}
