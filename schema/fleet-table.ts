/**
 * The fleet table's one writer. Every item anyone writes to it — the agents
 * (their HOST and IMAGE items, deregistration), the operator's CLI (`fleet
 * forget`), the fan-out Lambda (rollouts), the sweep (removal, pruning) and
 * the local stack (the deployment item) — is built and written here:
 * schema/fleet.ts says what the items and keys are, this module how they are
 * written, BatchWriteItem's unprocessed items resent with back-off, and how a
 * host is removed. Reads stay with their readers (the agent's deployment
 * item excepted, read here beside its writes).
 *
 * Errors are the SDK's (each caller maps them to its own reason codes), plus
 * UnprocessedWritesError when the table keeps refusing part of a batch.
 */
import {
  BatchWriteItemCommand,
  ConditionalCheckFailedException,
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  UpdateItemCommand,
  type DynamoDBClient,
  type WriteRequest,
} from '@aws-sdk/client-dynamodb';
import {
  fleetKeys,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostItem,
  type RolloutItem,
} from './fleet.js';
import { fromItem, toItem, type Plain } from './item-codec.js';

export interface ItemKey {
  pk: string;
  sk: string;
}

type IndexedKeys = 'pk' | 'sk' | 'gpk' | 'gsk';

export function hostItem(fields: Omit<HostItem, IndexedKeys>): HostItem {
  return {
    pk: fleetKeys.hostPk(fields.hostId),
    sk: fleetKeys.hostSk,
    gpk: fleetKeys.hostsGpk,
    gsk: fleetKeys.hostPk(fields.hostId),
    ...fields,
  };
}

export function hostImageItem(fields: Omit<HostImageItem, IndexedKeys>): HostImageItem {
  return {
    pk: fleetKeys.hostPk(fields.hostId),
    sk: fleetKeys.imageSk(fields.key),
    gpk: fleetKeys.imageGpk(fields.key),
    gsk: fleetKeys.hostPk(fields.hostId),
    ...fields,
  };
}

/** One event the fan-out sent, and the host queues (by name) it went to. */
export function rolloutItem(
  event: Pick<RolloutItem, 'key' | 'kind' | 'eTag' | 'sequencer'>,
  queues: readonly string[],
  sentAt: number,
): RolloutItem {
  return {
    pk: fleetKeys.rolloutPk(event.key),
    sk: fleetKeys.rolloutSk(event.sequencer),
    key: event.key,
    kind: event.kind,
    eTag: event.eTag,
    sequencer: event.sequencer,
    sentAt,
    queues: [...queues].sort(),
  };
}

/** Exponential back-off with full jitter: a random wait up to base·2^(attempt−1), at most maxMs. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number): number {
  return Math.round(Math.random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt - 1, 20)));
}

/** BatchWriteItem takes 25 requests; what it leaves unprocessed is resent this many times in all. */
const BATCH_SIZE = 25;
const BATCH_ATTEMPTS = 9;
const BATCH_BASE_DELAY_MS = 100;
const BATCH_MAX_DELAY_MS = 2000;

/** The table kept refusing part of a batch (throttling): the caller may run again. */
export class UnprocessedWritesError extends Error {
  override name = 'UnprocessedWritesError';
  constructor(readonly unprocessed: number) {
    super(
      `BatchWriteItem: ${unprocessed} deletes still unprocessed after ${BATCH_ATTEMPTS} attempts`,
    );
  }
}

/** A host to remove from the table, with what else goes between the intent and its items. */
export interface HostRemoval {
  hostId: string;
  /** Its other items (image items), by key; the HOST item is deleted last. */
  itemKeys: readonly ItemKey[];
  /**
   * The last heartbeat the caller saw: the host is marked gone first and its
   * HOST item deleted last only while the item still says this (a host that
   * came back is left alone). null: unconditionally (an operator's forget;
   * no mark, which the operator's policy may not write).
   */
  lastSeenAt: number | null;
  /** Runs after the mark and before any item goes: the host's queues, so a crash leaves items a rerun finds. */
  beforeItems: () => Promise<void>;
}

export interface HostRemoved {
  /** false: the host came back (its last heartbeat changed) and was left alone. */
  removed: boolean;
  /** Items deleted: its image items and its HOST item if there was one. */
  itemsDeleted: number;
}

export class FleetTable {
  constructor(
    readonly client: DynamoDBClient,
    readonly tableName: string,
    /** How back-off waits (tests pass one that records and returns at once). */
    private readonly wait: (ms: number) => Promise<void> = sleep,
  ) {}

  /** The stack's deployment item as stored (the reader checks its fields), or undefined. */
  async deploymentItem(signal?: AbortSignal): Promise<{ [k: string]: Plain } | undefined> {
    const out = await this.client.send(
      new GetItemCommand({
        TableName: this.tableName,
        Key: toItem(fleetKeys.config),
        ConsistentRead: true,
      }),
      { abortSignal: signal },
    );
    return out.Item === undefined ? undefined : fromItem(out.Item);
  }

  /** What the stack writes on deploy; the local stack writes it the same way. */
  async putDeployment(item: DeploymentConfigItem): Promise<void> {
    await this.put(item);
  }

  async putHost(item: HostItem): Promise<void> {
    await this.put(item);
  }

  /**
   * Write an image's state unless the table already holds a newer one (another
   * write of this host that overtook this one): false then.
   */
  async putHostImage(item: HostImageItem): Promise<boolean> {
    try {
      await this.client.send(
        new PutItemCommand({
          TableName: this.tableName,
          Item: toItem(item as unknown as Record<string, Plain>),
          ConditionExpression: 'attribute_not_exists(pk) OR updatedAt <= :u',
          ExpressionAttributeValues: { ':u': { N: String(item.updatedAt) } },
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) return false;
      throw err;
    }
  }

  /** Idempotent: a retried fan-out rewrites the same key with the same queues. */
  async putRollout(item: RolloutItem): Promise<void> {
    await this.put(item);
  }

  /** Mark a host gone (deregistered); false when the table has no item for it. */
  async markHostGone(hostId: string, at: number): Promise<boolean> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.tableName,
          Key: hostKey(hostId),
          UpdateExpression: 'SET #state = :gone, lastSeenAt = :at',
          ConditionExpression: 'attribute_exists(pk)',
          ExpressionAttributeNames: { '#state': 'state' },
          ExpressionAttributeValues: toItem({ ':gone': 'gone', ':at': at }),
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) return false;
      throw err;
    }
  }

  /**
   * Remove a host, intent first and idempotent: marked gone (when
   * conditional), `beforeItems`, its image items, its HOST item last; a
   * removal that dies half-way is finished by the next one.
   */
  async removeHost(r: HostRemoval): Promise<HostRemoved> {
    const seen = r.lastSeenAt === null ? null : toItem({ ':seen': r.lastSeenAt });
    const ifUnchanged =
      seen === null
        ? {}
        : { ConditionExpression: 'lastSeenAt = :seen', ExpressionAttributeValues: seen };
    if (seen !== null) {
      try {
        // A host that heartbeats from now on finds itself marked gone, not deleted.
        await this.client.send(
          new UpdateItemCommand({
            TableName: this.tableName,
            Key: hostKey(r.hostId),
            UpdateExpression: 'SET #state = :gone',
            ConditionExpression: 'lastSeenAt = :seen',
            ExpressionAttributeNames: { '#state': 'state' },
            ExpressionAttributeValues: { ...seen, ...toItem({ ':gone': 'gone' }) },
          }),
        );
      } catch (err) {
        if (err instanceof ConditionalCheckFailedException)
          return { removed: false, itemsDeleted: 0 }; // it came back
        throw err;
      }
    }
    await r.beforeItems();
    let itemsDeleted = await this.deleteItems(r.itemKeys.filter((k) => k.sk !== fleetKeys.hostSk));
    try {
      const out = await this.client.send(
        new DeleteItemCommand({
          TableName: this.tableName,
          Key: hostKey(r.hostId),
          ReturnValues: 'ALL_OLD',
          ...ifUnchanged,
        }),
      );
      if (out.Attributes !== undefined) itemsDeleted++;
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) return { removed: false, itemsDeleted }; // came back meanwhile
      throw err;
    }
    return { removed: true, itemsDeleted };
  }

  /** Delete items by key in batches, resending what the table leaves unprocessed; returns how many. */
  async deleteItems(keys: readonly ItemKey[]): Promise<number> {
    let deleted = 0;
    for (let i = 0; i < keys.length; i += BATCH_SIZE) {
      let requests: WriteRequest[] = keys
        .slice(i, i + BATCH_SIZE)
        .map((k) => ({ DeleteRequest: { Key: toItem({ pk: k.pk, sk: k.sk }) } }));
      for (let attempt = 1; requests.length > 0; attempt++) {
        if (attempt > BATCH_ATTEMPTS) throw new UnprocessedWritesError(requests.length);
        if (attempt > 1)
          await this.wait(backoffMs(attempt - 1, BATCH_BASE_DELAY_MS, BATCH_MAX_DELAY_MS));
        const out = await this.client.send(
          new BatchWriteItemCommand({ RequestItems: { [this.tableName]: requests } }),
        );
        const left = out.UnprocessedItems?.[this.tableName] ?? [];
        deleted += requests.length - left.length;
        requests = left;
      }
    }
    return deleted;
  }

  private async put(item: object): Promise<void> {
    await this.client.send(
      new PutItemCommand({
        TableName: this.tableName,
        Item: toItem(item as Record<string, Plain>),
      }),
    );
  }
}

function hostKey(hostId: string) {
  return toItem({ pk: fleetKeys.hostPk(hostId), sk: fleetKeys.hostSk });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
