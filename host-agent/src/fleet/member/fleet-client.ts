/**
 * The agent's connection to the fleet table (schema/fleet.ts): its DynamoDB
 * client, and the deployment item it reads first, checked field by field.
 * Its writes go through the table's one writer (schema/fleet-table.ts).
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type {
  DeploymentConfigItem,
  GroupPoolSettings,
  GroupQueueSettings,
} from '../../../../schema/fleet.js';
import type { FleetTable } from '../../../../schema/fleet-table.js';
import type { Plain } from '../../../../schema/item-codec.js';
import { UsageError } from '../../errors.js';
import {
  parseSignaturePolicy,
  SignaturePolicyError,
  type SignaturePolicy,
} from '../../../../schema/signature-policy.js';

export const DYNAMO_CONNECTION_TIMEOUT_MS = 5_000;
export const DYNAMO_SOCKET_TIMEOUT_MS = 15_000;

/** Configured the SDK's way (credentials chain, AWS_ENDPOINT_URL_DYNAMODB); region as given. */
export function createDynamoClient(region: string): DynamoDBClient {
  return new DynamoDBClient({
    region,
    requestHandler: {
      connectionTimeout: DYNAMO_CONNECTION_TIMEOUT_MS,
      socketTimeout: DYNAMO_SOCKET_TIMEOUT_MS,
    },
  });
}

/**
 * The stack's deployment item (routing, queue settings per group, stale/sweep
 * times), checked: a table without one is a configuration fault.
 */
export async function readDeployment(
  table: FleetTable,
  signal?: AbortSignal,
): Promise<DeploymentConfigItem> {
  const item = await table.deploymentItem(signal);
  if (item === undefined) {
    throw new UsageError(
      'CONFIG',
      `fleet table ${table.tableName} has no deployment item (pk CONFIG, sk DEPLOYMENT)`,
      'deploy the stack (it writes the item), or check THINRELAY_FLEET_TABLE and AWS_REGION',
    );
  }
  return parseDeployment(item, table.tableName);
}

/** The deployment item, checked field by field: a bad one names what is wrong. */
export function parseDeployment(o: { [k: string]: Plain }, table: string): DeploymentConfigItem {
  const bad = (field: string, want: string): never => {
    throw new UsageError(
      'CONFIG',
      `fleet table ${table}: deployment item field "${field}" must be ${want}, got ${JSON.stringify(o[field] ?? null)}`,
      'redeploy the stack: it writes this item',
    );
  };
  const str = (f: string): string => (typeof o[f] === 'string' ? o[f] : bad(f, 'a string'));
  const num = (f: string): number =>
    typeof o[f] === 'number' && o[f] >= 0 ? o[f] : bad(f, 'a number ≥ 0');
  const strings = (v: Plain | undefined): v is string[] =>
    Array.isArray(v) && v.every((s) => typeof s === 'string');
  const suffixes = o.imageSuffixes ?? [];
  if (!strings(suffixes)) bad('imageSuffixes', 'a list of strings');
  const routes = o.routes ?? {};
  if (
    typeof routes !== 'object' ||
    routes === null ||
    Array.isArray(routes) ||
    !Object.values(routes).every(strings)
  )
    bad('routes', 'a map of key prefix → list of groups');
  const groups = o.groups;
  if (typeof groups !== 'object' || groups === null || Array.isArray(groups))
    return bad('groups', 'a map of group → queue settings');
  const settings: Record<string, GroupQueueSettings> = {};
  for (const [name, g] of Object.entries(groups)) {
    const s = g as { [k: string]: Plain };
    const field = (f: keyof GroupQueueSettings): number =>
      typeof s?.[f] === 'number' && s[f] > 0 ? s[f] : bad(`groups.${name}.${f}`, 'a number > 0');
    settings[name] = {
      maxReceiveCount: field('maxReceiveCount'),
      visibilityTimeoutSeconds: field('visibilityTimeoutSeconds'),
      retentionDays: field('retentionDays'),
      dlqRetentionDays: field('dlqRetentionDays'),
    };
  }
  return {
    pk: 'CONFIG',
    sk: 'DEPLOYMENT',
    pools: parsePools(o.pools, bad),
    namePrefix: str('namePrefix'),
    bucket: str('bucket'),
    imagesPrefix:
      typeof o.imagesPrefix === 'string' ? o.imagesPrefix : bad('imagesPrefix', 'a string'),
    imageSuffixes: suffixes as string[],
    routes: routes as Record<string, string[]>,
    groups: settings,
    staleAfterSeconds: num('staleAfterSeconds'),
    sweepAfterSeconds: num('sweepAfterSeconds'),
    ...(o.signatures === undefined ? {} : { signatures: parseSignatures(o.signatures, table) }),
  };
}

/** Each group's signature policy, checked by the one parser the stack uses too. */
function parseSignatures(raw: Plain, table: string): Record<string, SignaturePolicy> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new UsageError(
      'CONFIG',
      `fleet table ${table}: deployment item field "signatures" must be a map of group → policy`,
      'redeploy the stack: it writes this item',
    );
  const out: Record<string, SignaturePolicy> = {};
  for (const [group, policy] of Object.entries(raw)) {
    try {
      out[group] = parseSignaturePolicy(policy, `signatures.${group}`);
    } catch (err) {
      if (!(err instanceof SignaturePolicyError)) throw err;
      throw new UsageError('CONFIG', `fleet table ${table}: ${err.message}`);
    }
  }
  return out;
}

/**
 * Each group's pool policy, field by field; a stack deployed before pools
 * existed wrote none ({}: the agents' defaults apply).
 */
function parsePools(
  raw: Plain | undefined,
  bad: (field: string, want: string) => never,
): Record<string, GroupPoolSettings> {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    return bad('pools', 'a map of group → pool policy');
  const out: Record<string, GroupPoolSettings> = {};
  for (const [name, p] of Object.entries(raw)) {
    const s = (p ?? {}) as { [k: string]: Plain };
    const pct = (f: keyof GroupPoolSettings): number => {
      const v = s[f];
      return typeof v === 'number' && v > 0 && v <= 100
        ? v
        : bad(`pools.${name}.${f}`, 'a percentage');
    };
    const pins = s.pins ?? [];
    if (!Array.isArray(pins) || !pins.every((x) => typeof x === 'string'))
      bad(`pools.${name}.pins`, 'a list of key patterns');
    out[name] = {
      retainVersions:
        typeof s.retainVersions === 'number' &&
        Number.isInteger(s.retainVersions) &&
        s.retainVersions >= 1
          ? s.retainVersions
          : bad(`pools.${name}.retainVersions`, 'a whole number ≥ 1'),
      highWatermarkPercent: pct('highWatermarkPercent'),
      lowWatermarkPercent: pct('lowWatermarkPercent'),
      metadataHighWatermarkPercent: pct('metadataHighWatermarkPercent'),
      metadataLowWatermarkPercent: pct('metadataLowWatermarkPercent'),
      pins,
    };
  }
  return out;
}
