/**
 * The operator's view of the fleet, computed from fleet-table items (no I/O):
 * which hosts are live, which hosts an image is expected on, the version a
 * rollout aims at, each host's state for that version, the counts, and
 * whether the rollout is finished (`fleet status`, `fleet wait`, `fleet hosts`).
 */
import {
  groupsForKey,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostImageState,
  type HostItem,
  type PoolUsage,
  type RolloutItem,
  parseHostQueueName,
} from '../../../../schema/fleet.js';
import { optionalETag } from '../../../../schema/etag.js';

/** live: heartbeating; stale: not seen for staleAfterSeconds; gone: deregistered. */
export type Liveness = 'live' | 'stale' | 'gone';
/** unregistered: named by a rollout's queue list but without a host item. */
export type RowLiveness = Liveness | 'unregistered';

export function liveness(host: HostItem, staleAfterSeconds: number, now: number): Liveness {
  if (host.state !== 'live') return 'gone';
  return now - host.lastSeenAt <= staleAfterSeconds * 1000 ? 'live' : 'stale';
}

export type ETagSource = 'flag' | 'object' | 'rollout' | 'hosts' | 'none';

/**
 * The version a rollout aims at: the one asked for, else the newest put
 * rollout's, else the version the most recent host report names.
 */
export function targetETag(
  asked: { eTag: string; source: ETagSource } | null,
  rollout: RolloutItem | null,
  items: readonly HostImageItem[],
): { eTag: string | null; source: ETagSource } {
  if (asked !== null) return { eTag: optionalETag(asked.eTag), source: asked.source };
  const fromRollout = optionalETag(rollout?.eTag);
  if (fromRollout !== null) return { eTag: fromRollout, source: 'rollout' };
  const newest = [...items]
    .filter((i) => optionalETag(i.eTag) !== null && i.state !== 'retired')
    .sort((a, b) => b.updatedAt - a.updatedAt)[0];
  return newest === undefined
    ? { eTag: null, source: 'none' }
    : { eTag: optionalETag(newest.eTag), source: 'hosts' };
}

export interface ImageHostRow {
  host: string;
  group: string;
  /** The host's state for the target version ('pending' while it holds another or none). */
  state: HostImageState;
  reason: string | null;
  message: string | null;
  /** The version the host reported (may differ from the target). */
  eTag: string | null;
  /** Who signed the target version, as the host verified it; null when not verified. */
  signer: string | null;
  /** When the host verified it (ISO 8601); null when not verified. */
  verifiedAt: string | null;
  updatedAt: string | null;
  liveness: RowLiveness;
  /** Counted in the rollout: live and in a routed group. */
  expected: boolean;
}

export interface ImageCounts {
  /** Live hosts of the routed groups: the rollout is done when all of them are ready. */
  expected: number;
  ready: number;
  processing: number;
  pending: number;
  /** Held back until its signature sidecar arrives (or its deadline fails it). */
  awaitingSignature: number;
  failed: number;
  /** Held, but no longer passes the signature policy: the rollout is not whole there. */
  untrusted: number;
  retired: number;
  /** Had the version, then dropped it for pool space: the rollout is not whole there. */
  evicted: number;
  /** Shown, not counted: hosts that are stale or gone, or never registered. */
  notLive: number;
}

/** ready: every expected host has the version; failed: all reported, at least one failed. */
export type RolloutOutcome = 'ready' | 'failed' | 'in-progress' | 'no-hosts';

export interface ImageStatus {
  key: string;
  etag: string | null;
  etagSource: ETagSource;
  groups: string[];
  outcome: RolloutOutcome;
  counts: ImageCounts;
  hosts: ImageHostRow[];
}

export interface ImageStatusInput {
  key: string;
  config: DeploymentConfigItem;
  hosts: readonly HostItem[];
  /** Every host's item for this key. */
  items: readonly HostImageItem[];
  rollout: RolloutItem | null;
  /** --etag, or the object's current ETag. */
  asked?: { eTag: string; source: ETagSource } | null;
  now: number;
}

export function routedGroups(key: string, config: DeploymentConfigItem): string[] {
  return groupsForKey(
    key,
    {
      imagesPrefix: config.imagesPrefix,
      imageSuffixes: config.imageSuffixes,
      routes: config.routes,
    },
    Object.keys(config.groups).sort(),
  );
}

/** The states whose row carries the host's reason code and message. */
const EXPLAINED: readonly HostImageState[] = [
  'failed',
  'evicted',
  'untrusted',
  'awaiting-signature',
];

/** Which count each host state adds to. */
const COUNTED: Record<HostImageState, keyof Omit<ImageCounts, 'expected' | 'notLive'>> = {
  pending: 'pending',
  processing: 'processing',
  'awaiting-signature': 'awaitingSignature',
  ready: 'ready',
  failed: 'failed',
  untrusted: 'untrusted',
  retired: 'retired',
  evicted: 'evicted',
};

export function imageStatus(input: ImageStatusInput): ImageStatus {
  const { key, config, now } = input;
  const groups = routedGroups(key, config);
  const target = targetETag(input.asked ?? null, input.rollout, input.items);
  const hostById = new Map(input.hosts.map((h) => [h.hostId, h]));
  const itemByHost = new Map(input.items.map((i) => [i.hostId, i]));

  const rowHosts = new Map<string, { group: string; liveness: RowLiveness }>();
  for (const h of input.hosts) {
    const l = liveness(h, config.staleAfterSeconds, now);
    if ((groups.includes(h.group) && l === 'live') || itemByHost.has(h.hostId))
      rowHosts.set(h.hostId, { group: h.group, liveness: l });
  }
  for (const i of input.items) {
    if (!rowHosts.has(i.hostId)) rowHosts.set(i.hostId, { group: i.group, liveness: 'gone' });
  }
  for (const q of input.rollout?.queues ?? []) {
    const parsed = parseHostQueueName(config.namePrefix, q);
    if (parsed === null || rowHosts.has(parsed.hostId)) continue;
    const h = hostById.get(parsed.hostId);
    rowHosts.set(parsed.hostId, {
      group: parsed.group,
      liveness: h === undefined ? 'unregistered' : liveness(h, config.staleAfterSeconds, now),
    });
  }

  const counts: ImageCounts = {
    expected: 0,
    ready: 0,
    processing: 0,
    pending: 0,
    awaitingSignature: 0,
    failed: 0,
    untrusted: 0,
    retired: 0,
    evicted: 0,
    notLive: 0,
  };
  const rows: ImageHostRow[] = [];
  for (const [host, { group, liveness: l }] of rowHosts) {
    const item = itemByHost.get(host);
    const itemETag = optionalETag(item?.eTag);
    const current = item !== undefined && (target.eTag === null || itemETag === target.eTag);
    const state: HostImageState = current ? item.state : 'pending';
    const expected = l === 'live' && groups.includes(group);
    const explained = current && EXPLAINED.includes(state);
    const verifiedAt = current ? (item.verifiedAt ?? null) : null;
    rows.push({
      host,
      group,
      state,
      reason: explained ? item.reasonCode : null,
      message: explained ? item.message : null,
      eTag: itemETag,
      signer: current ? (item.signer ?? null) : null,
      verifiedAt: verifiedAt === null ? null : new Date(verifiedAt).toISOString(),
      updatedAt: item === undefined ? null : new Date(item.updatedAt).toISOString(),
      liveness: l,
      expected,
    });
    if (!expected) {
      counts.notLive++;
      continue;
    }
    counts.expected++;
    counts[COUNTED[state]]++;
  }
  rows.sort((a, b) => Number(b.expected) - Number(a.expected) || a.host.localeCompare(b.host));

  let outcome: RolloutOutcome;
  if (counts.expected === 0) outcome = 'no-hosts';
  else if (counts.ready === counts.expected) outcome = 'ready';
  else if (
    counts.failed + counts.untrusted + counts.evicted > 0 &&
    counts.ready + counts.failed + counts.untrusted + counts.evicted === counts.expected
  )
    outcome = 'failed';
  else outcome = 'in-progress';

  return {
    key,
    etag: target.eTag,
    etagSource: target.source,
    groups,
    outcome,
    counts,
    hosts: rows,
  };
}

/** `fleet status` without a key: every image the table knows (items or rollouts). */
export function allImageStatuses(
  snapshot: {
    config: DeploymentConfigItem;
    hosts: readonly HostItem[];
    images: readonly HostImageItem[];
    rollouts: readonly RolloutItem[];
  },
  now: number,
): ImageStatus[] {
  const itemsByKey = new Map<string, HostImageItem[]>();
  for (const i of snapshot.images) {
    const list = itemsByKey.get(i.key) ?? [];
    list.push(i);
    itemsByKey.set(i.key, list);
  }
  const latestPut = new Map<string, RolloutItem>();
  for (const r of snapshot.rollouts) {
    if (r.kind !== 'image.put') continue;
    const prev = latestPut.get(r.key);
    if (prev === undefined || r.sk > prev.sk) latestPut.set(r.key, r);
  }
  const keys = [...new Set([...itemsByKey.keys(), ...latestPut.keys()])].sort();
  return keys
    .map((key) =>
      imageStatus({
        key,
        config: snapshot.config,
        hosts: snapshot.hosts,
        items: itemsByKey.get(key) ?? [],
        rollout: latestPut.get(key) ?? null,
        now,
      }),
    )
    .filter((s) => s.hosts.length === 0 || !s.hosts.every((h) => h.state === 'retired'));
}

export interface HostSummary {
  host: string;
  group: string;
  liveness: Liveness;
  lastSeenAt: string;
  lastSeenSecondsAgo: number;
  agentVersion: string;
  backend: string;
  ready: number;
  failed: number;
  processing: number;
  awaitingSignature: number;
  untrusted: number;
  pool: PoolUsage | null;
  dlqDepth: number | null;
}

/** `fleet hosts`: every host with its liveness and image counts, by group then id. */
export function hostSummaries(
  hosts: readonly HostItem[],
  images: readonly HostImageItem[],
  config: Pick<DeploymentConfigItem, 'staleAfterSeconds'>,
  now: number,
): HostSummary[] {
  type HostCounts = Pick<
    HostSummary,
    'ready' | 'failed' | 'processing' | 'awaitingSignature' | 'untrusted'
  >;
  const none = (): HostCounts => ({
    ready: 0,
    failed: 0,
    processing: 0,
    awaitingSignature: 0,
    untrusted: 0,
  });
  const counts = new Map<string, HostCounts>();
  for (const i of images) {
    const c = counts.get(i.hostId) ?? none();
    const counted = COUNTED[i.state];
    if (counted in c) c[counted as keyof HostCounts]++;
    counts.set(i.hostId, c);
  }
  return hosts
    .map((h) => ({
      host: h.hostId,
      group: h.group,
      liveness: liveness(h, config.staleAfterSeconds, now),
      lastSeenAt: new Date(h.lastSeenAt).toISOString(),
      lastSeenSecondsAgo: Math.max(0, Math.round((now - h.lastSeenAt) / 1000)),
      agentVersion: h.agentVersion,
      backend: h.backend,
      ...(counts.get(h.hostId) ?? none()),
      pool: h.pool,
      dlqDepth: h.dlqDepth,
    }))
    .sort((a, b) => a.group.localeCompare(b.group) || a.host.localeCompare(b.host));
}

/** "10m", "90s", "1h", "500ms", or plain seconds → milliseconds; null if malformed. */
export function parseDuration(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (m === null) return null;
  const n = Number(m[1]);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] ?? 1000;
  return Math.round(n * unit);
}
