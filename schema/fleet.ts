/**
 * The fleet contract: host-queue names, the fleet table's keys and items, and
 * the routing rule that decides which host groups an image key is for. The
 * stack (infra/), the fan-out and sweep Lambdas (lambda/) and the agents
 * (host-agent/) all import this module, so each has exactly one definition.
 *
 * Fleet table (one DynamoDB table, on-demand, keys `pk`/`sk`, one GSI
 * `byImage` on `gpk`/`gsk`, which also lists every host under gpk HOSTS):
 *
 *   pk                 sk                     item
 *   CONFIG             DEPLOYMENT             DeploymentConfigItem (written by the stack)
 *   HOST#<hostId>      HOST                   HostItem (the agent; the sweep deletes it), gpk = HOSTS, gsk = HOST#<hostId>
 *   HOST#<hostId>      IMAGE#<key>            HostImageItem (the agent), gpk = IMAGE#<key>, gsk = HOST#<hostId>
 *   ROLLOUT#<key>      SEQ#<sequencer>        RolloutItem (the fan-out Lambda)
 *
 * Everything a host writes is under its own partition key, so IAM can hold a
 * host to its own items (dynamodb:LeadingKeys).
 */

import { isSidecarKey } from './sidecar-key.js';
import type { SignaturePolicy } from './signature-policy.js';

/** Group names: letters, digits and '_' ('-' ends the group inside a queue name). */
export const GROUP_NAME = /^[A-Za-z0-9_]{1,32}$/;
/** Host ids: letters, digits and '-' (an EC2 instance id fits); SQS names allow 80 characters in all. */
export const HOST_ID = /^[A-Za-z0-9-]{1,40}$/;

export const FLEET_GSI = 'byImage';

export const fleetKeys = {
  config: { pk: 'CONFIG', sk: 'DEPLOYMENT' },
  hostPk: (hostId: string) => `HOST#${hostId}`,
  hostSk: 'HOST',
  /** GSI partition holding every host item: `fleet hosts` reads hosts without scanning images. */
  hostsGpk: 'HOSTS',
  imageSk: (key: string) => `IMAGE#${key}`,
  /** GSI partition: every host's item for one image key. */
  imageGpk: (key: string) => `IMAGE#${key}`,
  rolloutPk: (key: string) => `ROLLOUT#${key}`,
  /** Sequencers right-padded so that string order is S3's order (compareSequencers). */
  rolloutSk: (sequencer: string) => `SEQ#${sequencer.toUpperCase().padEnd(32, '0')}`,
} as const;

/** Queue names: the convention the fan-out Lambda discovers (prefix) and routes (group) by. */
export const queueNames = {
  /** Every host queue's name, and only host queues', starts with it. */
  hostQueuePrefix: (namePrefix: string) => `${namePrefix}-host-`,
  hostQueue: (namePrefix: string, group: string, hostId: string) =>
    `${namePrefix}-host-${group}-${hostId}`,
  /** Deliberately not under the host prefix: discovery must never publish into a DLQ. */
  dlqPrefix: (namePrefix: string) => `${namePrefix}-dlq-`,
  dlq: (namePrefix: string, group: string, hostId: string) =>
    `${namePrefix}-dlq-${group}-${hostId}`,
} as const;

/** What a host queue's name says: its group and host id; null if it is not one. */
export function parseHostQueueName(
  namePrefix: string,
  queueName: string,
): { group: string; hostId: string } | null {
  const prefix = queueNames.hostQueuePrefix(namePrefix);
  if (!queueName.startsWith(prefix)) return null;
  const rest = queueName.slice(prefix.length);
  const dash = rest.indexOf('-');
  if (dash <= 0) return null;
  const group = rest.slice(0, dash);
  const hostId = rest.slice(dash + 1);
  return GROUP_NAME.test(group) && HOST_ID.test(hostId) ? { group, hostId } : null;
}

/** Settings a group's agents create their queues with (the stack used to set them). */
export interface GroupQueueSettings {
  maxReceiveCount: number;
  visibilityTimeoutSeconds: number;
  retentionDays: number;
  dlqRetentionDays: number;
}

/**
 * A group's pool policy (host-agent/src/pool/policy.ts): versions kept per
 * key, eviction watermarks (percent of pool capacity), and keys or globs
 * whose current version is never evicted. A host's agent.env may override
 * each field; pins add up.
 */
export type GroupPoolSettings = {
  retainVersions: number;
  highWatermarkPercent: number;
  lowWatermarkPercent: number;
  metadataHighWatermarkPercent: number;
  metadataLowWatermarkPercent: number;
  pins: string[];
};

/** The one deployment item: routing and per-group settings, written by the stack. */
export interface DeploymentConfigItem {
  pk: 'CONFIG';
  sk: 'DEPLOYMENT';
  namePrefix: string;
  bucket: string;
  imagesPrefix: string;
  /** Empty = any suffix. */
  imageSuffixes: string[];
  /** Key prefix → groups; keys under no route go to every group. */
  routes: Record<string, string[]>;
  groups: Record<string, GroupQueueSettings>;
  /** Each group's pool policy; read as {} from items written before it existed (defaults apply). */
  pools: Record<string, GroupPoolSettings>;
  /**
   * Each group's signature policy (schema/signature-policy.ts); absent from
   * items written before it existed (signatures off). Group agents apply it (host-agent/src/trust/host-policy.ts).
   */
  signatures?: Record<string, SignaturePolicy>;
  /** A host not seen for this long is stale; after sweepAfterSeconds more it is removed. */
  staleAfterSeconds: number;
  sweepAfterSeconds: number;
}

export interface PoolUsage {
  dataUsedBytes: number;
  dataTotalBytes: number;
  metadataUsedBytes: number;
  metadataTotalBytes: number;
}

export type HostState = 'live' | 'gone';

export interface HostItem {
  pk: string;
  sk: 'HOST';
  gpk: 'HOSTS';
  gsk: string;
  hostId: string;
  group: string;
  state: HostState;
  queueUrl: string;
  dlqUrl: string;
  agentVersion: string;
  backend: string;
  /** Epoch milliseconds. */
  registeredAt: number;
  lastSeenAt: number;
  /** null: not measured — no pool yet (a fresh host's first beat) or its status failed. */
  pool: PoolUsage | null;
  dlqDepth: number | null;
}

/**
 * `evicted`: the host had the key's current version and dropped it for pool
 * space. `awaiting-signature`: its group's signature policy requires a
 * signature that has not arrived (docs/trust.md). `untrusted`: held, but it no
 * longer passes the policy (`thinrelay verify`): it takes no new snapshots.
 */
export type HostImageState =
  | 'pending'
  | 'processing'
  | 'awaiting-signature'
  | 'ready'
  | 'failed'
  | 'untrusted'
  | 'retired'
  | 'evicted';

export interface HostImageItem {
  pk: string;
  sk: string;
  gpk: string;
  gsk: string;
  hostId: string;
  group: string;
  key: string;
  eTag: string | null;
  versionId: string | null;
  state: HostImageState;
  reasonCode: string | null;
  message: string | null;
  /**
   * Who signed this version, as verified on the host: a key
   * (`sha256:<fingerprint> (ecdsa-p256)`) or a keyless identity
   * (`<issuer> <subject>`); null when not verified (no policy, not yet, or
   * failed). Absent on items written before signatures existed.
   */
  signer?: string | null;
  /** When the signature was verified, epoch milliseconds; null or absent as for signer. */
  verifiedAt?: number | null;
  /** Epoch milliseconds. */
  updatedAt: number;
}

export interface RolloutItem {
  pk: string;
  sk: string;
  key: string;
  kind: 'image.put' | 'image.delete';
  eTag: string | null;
  sequencer: string;
  /** Epoch milliseconds when the fan-out sent it. */
  sentAt: number;
  /** Host queue names it was sent to (parseHostQueueName gives group and host). */
  queues: string[];
}

export interface Routing {
  imagesPrefix: string;
  imageSuffixes: readonly string[];
  routes: Readonly<Record<string, readonly string[]>>;
}

/**
 * The groups an image key is for: the longest matching route's groups, or
 * `allGroups` when no route matches; none when the key is not an image key
 * (a signature sidecar never is: it goes where the image it signs goes).
 */
export function groupsForKey(
  key: string,
  routing: Routing,
  allGroups: readonly string[],
): string[] {
  if (!key.startsWith(routing.imagesPrefix) || key.endsWith('/') || isSidecarKey(key)) return [];
  if (routing.imageSuffixes.length > 0 && !routing.imageSuffixes.some((s) => key.endsWith(s))) {
    return [];
  }
  const match = Object.keys(routing.routes)
    .filter((prefix) => key.startsWith(prefix))
    .sort((a, b) => b.length - a.length)[0];
  return match === undefined ? [...allGroups] : [...routing.routes[match]!];
}

/** Is `key` for `group`? (groupsForKey for one group, without knowing the others.) */
export function isKeyForGroup(key: string, routing: Routing, group: string): boolean {
  return groupsForKey(key, routing, [group]).includes(group);
}
