/**
 * The fleet sweep: one pass over the fleet table and the host queues that
 * measures the fleet (live and stale hosts, hosts with a failed image,
 * messages waiting in host DLQs, the oldest unfinished rollout) and removes
 * what has been gone too long: hosts not seen for staleAfter + sweepAfter
 * (deregistered ones after sweepAfter), with their queues, DLQ and items, and
 * host queues nobody owns (no HOST item) older than that, and rollout items
 * superseded by a newer rollout of the same key for longer than sweepAfter.
 *
 * Removal is the table's one host removal (schema/fleet-table.ts, which
 * `fleet forget` uses too), crash-safe and idempotent, intent first: the
 * HOST item is marked `gone` only if the host has not been seen since the
 * scan (a host that came back is left alone), then queues and IMAGE items are
 * deleted, and the HOST item last, again only if still unchanged; a sweep
 * that dies half-way leaves a `gone` host the next sweep finishes. Failures
 * of one host do not stop the others; they are returned (the handler fails
 * the invocation after publishing the metrics, so the errors alarm fires).
 */
import { ScanCommand, type AttributeValue, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  ListQueuesCommand,
  QueueDoesNotExist,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import {
  fleetKeys,
  parseHostQueueName,
  queueNames,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostItem,
  type RolloutItem,
} from '../../schema/fleet.js';
import { sameETag } from '../../schema/etag.js';
import { FleetTable } from '../../schema/fleet-table.js';
import { fromItem } from '../../schema/item-codec.js';

export class SweepError extends Error {
  override name = 'SweepError';
}

export interface SweepOptions {
  ddb: DynamoDBClient;
  sqs: SQSClient;
  table: string;
  /** Epoch milliseconds (a parameter so tests can move time). */
  now: number;
}

export interface SweepReport {
  liveHosts: number;
  staleHosts: number;
  hostsWithFailedImage: number;
  dlqMessages: number;
  /** 0 when every latest rollout is finished on every live host it targeted. */
  oldestUnfinishedRolloutSeconds: number;
  unfinishedRollouts: string[];
  /** Host ids removed (queues, DLQ, items). */
  swept: string[];
  /** Queues without a HOST item that were deleted. */
  orphanQueuesDeleted: string[];
  /** Rollout items superseded by a newer rollout of their key for longer than sweepAfter, deleted. */
  rolloutsPruned: number;
  errors: { host: string; error: string }[];
}

interface QueueInfo {
  url: string;
  name: string;
  group: string;
  hostId: string;
}

export async function sweep(opts: SweepOptions): Promise<SweepReport> {
  const table = new FleetTable(opts.ddb, opts.table);
  const items = await scanAll(opts.ddb, opts.table);
  const config = items.find((i) => i.pk === fleetKeys.config.pk && i.sk === fleetKeys.config.sk) as
    DeploymentConfigItem | undefined;
  if (config === undefined) {
    throw new SweepError(
      `table ${opts.table} has no ${fleetKeys.config.pk}/${fleetKeys.config.sk} item: is the stack deployed?`,
    );
  }
  const staleMs = config.staleAfterSeconds * 1000;
  const sweepMs = config.sweepAfterSeconds * 1000;
  const hosts = items.filter((i) => i.sk === fleetKeys.hostSk) as unknown as HostItem[];
  const images = items.filter((i) =>
    String(i.sk).startsWith('IMAGE#'),
  ) as unknown as HostImageItem[];
  const rollouts = items.filter((i) =>
    String(i.pk).startsWith('ROLLOUT#'),
  ) as unknown as RolloutItem[];

  const age = (h: HostItem) => opts.now - h.lastSeenAt;
  const live = hosts.filter((h) => h.state === 'live' && age(h) <= staleMs);
  const stale = hosts.filter((h) => h.state === 'live' && age(h) > staleMs);
  const liveIds = new Set(live.map((h) => h.hostId));

  const hostQueues = await listQueues(opts.sqs, config.namePrefix, 'host');
  const dlqs = await listQueues(opts.sqs, config.namePrefix, 'dlq');
  const dlqAttributes = await Promise.all(dlqs.map((q) => queueAttributes(opts.sqs, q.url)));
  const dlqMessages = dlqAttributes.reduce((sum, a) => sum + (a?.messages ?? 0), 0);

  const failedHosts = new Set(
    images.filter((i) => i.state === 'failed' && liveIds.has(i.hostId)).map((i) => i.hostId),
  );

  const { oldestMs, unfinished } = unfinishedRollouts(
    config.namePrefix,
    rollouts,
    images,
    liveIds,
    opts.now,
  );

  const report: SweepReport = {
    liveHosts: live.length,
    staleHosts: stale.length,
    hostsWithFailedImage: failedHosts.size,
    dlqMessages,
    oldestUnfinishedRolloutSeconds: Math.floor(oldestMs / 1000),
    unfinishedRollouts: unfinished,
    swept: [],
    orphanQueuesDeleted: [],
    rolloutsPruned: 0,
    errors: [],
  };

  // Hosts gone too long: stale beyond staleAfter + sweepAfter, or deregistered beyond sweepAfter.
  const expired = hosts.filter((h) =>
    h.state === 'gone' ? age(h) > sweepMs : age(h) > staleMs + sweepMs,
  );
  for (const host of expired) {
    try {
      const removed = await removeHost(table, opts.sqs, host, [...hostQueues, ...dlqs], images);
      if (removed) report.swept.push(host.hostId);
    } catch (err) {
      report.errors.push({ host: host.hostId, error: describe(err) });
    }
  }

  // Queues of no known host (a registration that never wrote its item, a forgotten host).
  const owners = new Set(hosts.map((h) => `${h.group}/${h.hostId}`));
  const orphans = [...hostQueues, ...dlqs].filter((q) => !owners.has(`${q.group}/${q.hostId}`));
  for (const q of orphans) {
    try {
      const attrs = dlqAttributes[dlqs.indexOf(q)] ?? (await queueAttributes(opts.sqs, q.url));
      if (attrs === null) continue;
      if (opts.now - attrs.createdAt > staleMs + sweepMs) {
        await deleteQueue(opts.sqs, q.url);
        report.orphanQueuesDeleted.push(q.name);
      }
    } catch (err) {
      report.errors.push({ host: q.hostId, error: `queue ${q.name}: ${describe(err)}` });
    }
  }
  // Superseded rollouts: keep the table (and this scan) proportional to the bucket, not its history.
  const latest = latestRollouts(rollouts);
  const superseded = rollouts.filter(
    (r) => latest.get(r.key)?.sk !== r.sk && opts.now - r.sentAt > sweepMs,
  );
  try {
    report.rolloutsPruned = await table.deleteItems(superseded);
  } catch (err) {
    report.errors.push({ host: '-', error: `pruning rollouts: ${describe(err)}` });
  }
  return report;
}

/** The newest rollout item (highest sequencer) of each key. */
export function latestRollouts(rollouts: readonly RolloutItem[]): Map<string, RolloutItem> {
  const latest = new Map<string, RolloutItem>();
  for (const r of rollouts) {
    const seen = latest.get(r.key);
    if (seen === undefined || r.sk > seen.sk) latest.set(r.key, r);
  }
  return latest;
}

/**
 * The latest rollout of each key is unfinished while a live host it was sent
 * to has not reached its final state: that ETag ready (or failed) for a put,
 * retired (or no item) for a delete. Stale, gone and unknown hosts do not hold
 * a rollout up; hosts that joined later catch up by sync.
 */
export function unfinishedRollouts(
  namePrefix: string,
  rollouts: readonly RolloutItem[],
  images: readonly HostImageItem[],
  liveIds: ReadonlySet<string>,
  now: number,
): { oldestMs: number; unfinished: string[] } {
  const latest = latestRollouts(rollouts);
  const imageOf = new Map(images.map((i) => [`${i.hostId}\n${i.key}`, i]));
  let oldestMs = 0;
  const unfinished: string[] = [];
  for (const r of latest.values()) {
    const targets = r.queues
      .map((name) => parseHostQueueName(namePrefix, name)?.hostId ?? null)
      .filter((id): id is string => id !== null && liveIds.has(id));
    const pending = targets.filter((id) => !isDone(r, imageOf.get(`${id}\n${r.key}`)));
    if (pending.length > 0) {
      unfinished.push(r.key);
      oldestMs = Math.max(oldestMs, now - r.sentAt);
    }
  }
  return { oldestMs, unfinished: unfinished.sort() };
}

function isDone(r: RolloutItem, image: HostImageItem | undefined): boolean {
  if (r.kind === 'image.delete') return image === undefined || image.state === 'retired';
  if (image === undefined || (image.state !== 'ready' && image.state !== 'failed')) return false;
  // S3 events carry ETags bare, the S3 API quoted.
  return r.eTag === null || (image.eTag !== null && sameETag(r.eTag, image.eTag));
}

/** A host's queues, DLQ and items; false when it came back meanwhile and was left alone. */
async function removeHost(
  table: FleetTable,
  sqs: SQSClient,
  host: HostItem,
  queues: readonly QueueInfo[],
  images: readonly HostImageItem[],
): Promise<boolean> {
  const urls = new Set(
    queues.filter((q) => q.hostId === host.hostId && q.group === host.group).map((q) => q.url),
  );
  for (const url of [host.queueUrl, host.dlqUrl]) if (url) urls.add(url);
  const { removed } = await table.removeHost({
    hostId: host.hostId,
    itemKeys: images.filter((i) => i.hostId === host.hostId),
    lastSeenAt: host.lastSeenAt,
    beforeItems: async () => {
      for (const url of urls) await deleteQueue(sqs, url);
    },
  });
  return removed;
}

async function scanAll(ddb: DynamoDBClient, table: string): Promise<Record<string, unknown>[]> {
  const items: Record<string, unknown>[] = [];
  let ExclusiveStartKey: Record<string, AttributeValue> | undefined;
  do {
    const out = await ddb.send(
      new ScanCommand({ TableName: table, ConsistentRead: true, ExclusiveStartKey }),
    );
    for (const item of out.Items ?? []) items.push(fromItem(item));
    ExclusiveStartKey = out.LastEvaluatedKey;
  } while (ExclusiveStartKey);
  return items;
}

async function listQueues(
  sqs: SQSClient,
  namePrefix: string,
  kind: 'host' | 'dlq',
): Promise<QueueInfo[]> {
  const prefix =
    kind === 'host' ? queueNames.hostQueuePrefix(namePrefix) : queueNames.dlqPrefix(namePrefix);
  const found: QueueInfo[] = [];
  let NextToken: string | undefined;
  do {
    const out = await sqs.send(
      new ListQueuesCommand({ QueueNamePrefix: prefix, MaxResults: 1000, NextToken }),
    );
    for (const url of out.QueueUrls ?? []) {
      const name = url.slice(url.lastIndexOf('/') + 1);
      // A DLQ name is a host queue name with the other infix.
      const parsed = parseHostQueueName(
        namePrefix,
        queueNames.hostQueuePrefix(namePrefix) + name.slice(prefix.length),
      );
      if (parsed !== null && name.startsWith(prefix)) found.push({ url, name, ...parsed });
    }
    NextToken = out.NextToken;
  } while (NextToken);
  return found;
}

async function queueAttributes(
  sqs: SQSClient,
  url: string,
): Promise<{ messages: number; createdAt: number } | null> {
  try {
    const out = await sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: url,
        AttributeNames: ['ApproximateNumberOfMessages', 'CreatedTimestamp'],
      }),
    );
    return {
      messages: Number(out.Attributes?.ApproximateNumberOfMessages ?? 0),
      createdAt: Number(out.Attributes?.CreatedTimestamp ?? 0) * 1000,
    };
  } catch (err) {
    if (isGone(err)) return null; // deleted since the listing
    throw err;
  }
}

async function deleteQueue(sqs: SQSClient, url: string): Promise<void> {
  try {
    await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
  } catch (err) {
    if (!isGone(err)) throw err;
  }
}

function isGone(err: unknown): boolean {
  const name = (err as { name?: string }).name ?? '';
  return (
    err instanceof QueueDoesNotExist ||
    name === 'QueueDoesNotExist' ||
    name === 'AWS.SimpleQueueService.NonExistentQueue'
  );
}

function describe(err: unknown): string {
  const e = err as Error;
  return `${e.name}: ${e.message}`;
}
