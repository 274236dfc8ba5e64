/**
 * Recording rollouts: after the fan-out has sent an event, one RolloutItem
 * (schema/fleet.ts, written by schema/fleet-table.ts) per event in the
 * fleet table says which host queues it went to and when, so `fleet
 * status`/`fleet wait` and the sweep know the expected hosts even of a host
 * that never answers. Only image events are rollouts: a signature sidecar's
 * event (`sidecar.put`) is not an image and is never recorded (isImageEvent).
 *
 * The messages already sent are what matters: a write that still fails after
 * retries is reported to the caller (which logs it and counts it in a metric
 * with its own alarm), never thrown: throwing would make Lambda re-run the
 * whole fan-out to record one item.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { backoffMs, FleetTable, rolloutItem } from '../../schema/fleet-table.js';
import type { RolloutItem } from '../../schema/fleet.js';
import type { ImageEvent } from '../../schema/image-event.js';
import { queueNameOf } from './fanout.js';

export interface RecordOptions {
  ddb: DynamoDBClient;
  table: string;
  /** Attempts per item, on top of the SDK's own retries (default 3). */
  maxAttempts?: number;
  baseDelayMs?: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

export interface UnrecordedRollout {
  key: string;
  sequencer: string;
  error: string;
}

/** An event about an image itself (put or delete), as opposed to a sidecar of one. */
export type RolloutEvent = ImageEvent & { kind: RolloutItem['kind'] };

export function isImageEvent(event: ImageEvent): event is RolloutEvent {
  return event.kind === 'image.put' || event.kind === 'image.delete';
}

/** Writes one item per (event, its target queues); returns the ones that could not be written. */
export async function recordRollouts(
  sent: readonly { event: RolloutEvent; queueUrls: readonly string[] }[],
  opts: RecordOptions,
): Promise<UnrecordedRollout[]> {
  const maxAttempts = opts.maxAttempts ?? 3;
  const baseDelayMs = opts.baseDelayMs ?? 100;
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const sentAt = (opts.now ?? Date.now)();
  const table = new FleetTable(opts.ddb, opts.table);
  const failed: UnrecordedRollout[] = [];
  await Promise.all(
    sent.map(async ({ event, queueUrls }) => {
      const item = rolloutItem(event, queueUrls.map(queueNameOf), sentAt);
      for (let attempt = 1; ; attempt++) {
        try {
          await table.putRollout(item);
          return;
        } catch (err) {
          if (attempt >= maxAttempts) {
            const e = err as Error;
            failed.push({
              key: event.key,
              sequencer: event.sequencer,
              error: `${e.name}: ${e.message}`,
            });
            return;
          }
          await sleep(backoffMs(attempt, baseDelayMs, Infinity));
        }
      }
    }),
  );
  return failed;
}
