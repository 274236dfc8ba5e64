/**
 * Publishing image events to host queues: which queues exist (discovery,
 * cached), which of them an event is for (routing), and getting every
 * message into every target queue (batching, bounded concurrency, retries).
 *
 * Delivery contract: either every (event, queue) pair was accepted by SQS, or
 * publish() throws a FanoutError listing what was not. Throwing makes Lambda's
 * async retry run the whole invocation again; queues that already got their
 * messages get duplicates, which consumers deduplicate (S3 itself is
 * at-least-once, so they must anyway).
 */
import {
  paginateListQueues,
  SendMessageBatchCommand,
  type MessageAttributeValue,
  type SendMessageBatchRequestEntry,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { imageKeyOf, serializeImageEvent, type ImageEvent } from '../../schema/image-event.js';
import type { LambdaConfig } from './config.js';

export const MAX_BATCH_ENTRIES = 10;
export const MAX_BATCH_BYTES = 256 * 1024;

/** Host queue URLs from ListQueues (paginated), cached for `ttlMs` across warm invocations. */
export class QueueDirectory {
  private cached: { urls: string[]; at: number } | null = null;

  constructor(
    private readonly sqs: SQSClient,
    private readonly prefix: string,
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async list(): Promise<string[]> {
    if (this.cached && this.now() - this.cached.at < this.ttlMs) return this.cached.urls;
    const urls: string[] = [];
    const pages = paginateListQueues(
      { client: this.sqs, pageSize: 1000 },
      { QueueNamePrefix: this.prefix },
    );
    for await (const page of pages) urls.push(...(page.QueueUrls ?? []));
    urls.sort();
    this.cached = { urls, at: this.now() };
    return urls;
  }

  /** After a failed publish: a queue may have been deleted or added since. */
  invalidate(): void {
    this.cached = null;
  }
}

export function queueNameOf(url: string): string {
  return url.slice(url.lastIndexOf('/') + 1);
}

/**
 * The queues an event for image `key` goes to: its route's groups, or every
 * host. A sidecar's event is routed by the image key it signs (imageKeyOf).
 */
export function targetsFor(
  key: string,
  queueUrls: readonly string[],
  config: Pick<LambdaConfig, 'routes' | 'queuePrefix'>,
): string[] {
  const route = config.routes.find((r) => key.startsWith(r.keyPrefix));
  if (!route) return [...queueUrls];
  const starts = route.groups.map((g) => `${config.queuePrefix}${g}-`);
  return queueUrls.filter((u) => starts.some((s) => queueNameOf(u).startsWith(s)));
}

export interface FailedEntry {
  queueUrl: string;
  bucket: string;
  key: string;
  sequencer: string;
  code: string;
  message: string;
  senderFault: boolean;
}

export class FanoutError extends Error {
  constructor(readonly failures: FailedEntry[]) {
    const shown = failures
      .slice(0, 20)
      .map((f) => `${queueNameOf(f.queueUrl)} ${f.bucket}/${f.key}@${f.sequencer}: ${f.code}`);
    const more = failures.length > 20 ? `; and ${failures.length - 20} more` : '';
    super(`${failures.length} message(s) not delivered: ${shown.join('; ')}${more}`);
    this.name = 'FanoutError';
  }
}

export interface PublishOptions {
  sqs: SQSClient;
  /** Queues sent to in parallel (FANOUT_CONCURRENCY). */
  concurrency: number;
  /** Attempts per entry, including the first (default 4). */
  maxAttempts?: number;
  /** First retry delay; doubles each attempt, with full jitter (default 100 ms). */
  baseDelayMs?: number;
  sleep?: (ms: number) => Promise<void>;
}

export interface PublishResult {
  /** Messages accepted by SQS (one per event per target queue). */
  sent: number;
  queues: number;
}

/** Sends every event to each of its target queues; throws FanoutError if any did not make it. */
export async function publish(
  events: readonly ImageEvent[],
  queueUrls: readonly string[],
  config: Pick<LambdaConfig, 'routes' | 'queuePrefix'>,
  opts: PublishOptions,
): Promise<PublishResult> {
  const perQueue = new Map<string, ImageEvent[]>();
  for (const event of events) {
    for (const url of targetsFor(imageKeyOf(event), queueUrls, config)) {
      const list = perQueue.get(url) ?? [];
      list.push(event);
      perQueue.set(url, list);
    }
  }
  const failures: FailedEntry[] = [];
  let sent = 0;
  const tasks = [...perQueue].map(([url, list]) => async () => {
    for (const batch of toBatches(list)) {
      const result = await sendWithRetry(opts.sqs, url, batch, opts);
      sent += result.sent;
      failures.push(...result.failed);
    }
  });
  await runBounded(tasks, opts.concurrency);
  if (failures.length > 0) throw new FanoutError(failures);
  return { sent, queues: perQueue.size };
}

interface Entry {
  event: ImageEvent;
  request: SendMessageBatchRequestEntry;
  bytes: number;
}

/** Splits one queue's messages into SendMessageBatch calls of ≤ 10 entries and ≤ 256 KiB. */
export function toBatches(events: readonly ImageEvent[]): Entry[][] {
  const batches: Entry[][] = [];
  let current: Entry[] = [];
  let bytes = 0;
  events.forEach((event, i) => {
    const entry = toEntry(event, i);
    if (
      current.length === MAX_BATCH_ENTRIES ||
      (current.length > 0 && bytes + entry.bytes > MAX_BATCH_BYTES)
    ) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(entry);
    bytes += entry.bytes;
  });
  if (current.length > 0) batches.push(current);
  return batches;
}

function toEntry(event: ImageEvent, index: number): Entry {
  const body = serializeImageEvent(event);
  // Attributes let operators filter and inspect queues without parsing bodies.
  const attributes: Record<string, MessageAttributeValue> = {
    kind: { DataType: 'String', StringValue: event.kind },
    bucket: { DataType: 'String', StringValue: event.bucket },
    key: { DataType: 'String', StringValue: event.key },
  };
  // SQS counts attribute names, types and values against the message size.
  let bytes = Buffer.byteLength(body);
  for (const [name, v] of Object.entries(attributes)) {
    bytes += Buffer.byteLength(name) + Buffer.byteLength(v.DataType ?? '');
    bytes += Buffer.byteLength(v.StringValue ?? '');
  }
  return {
    event,
    bytes,
    // Ids only need to be unique within one batch; the index is.
    request: { Id: `m${index}`, MessageBody: body, MessageAttributes: attributes },
  };
}

async function sendWithRetry(
  sqs: SQSClient,
  queueUrl: string,
  batch: Entry[],
  opts: PublishOptions,
): Promise<{ sent: number; failed: FailedEntry[] }> {
  const maxAttempts = opts.maxAttempts ?? 4;
  const baseDelayMs = opts.baseDelayMs ?? 100;
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const failed: FailedEntry[] = [];
  let sent = 0;
  let pending = batch;
  for (let attempt = 1; pending.length > 0; attempt++) {
    const retryable: { entry: Entry; code: string; message: string }[] = [];
    try {
      const out = await sqs.send(
        new SendMessageBatchCommand({
          QueueUrl: queueUrl,
          Entries: pending.map((e) => e.request),
        }),
      );
      sent += out.Successful?.length ?? 0;
      for (const f of out.Failed ?? []) {
        const entry = pending.find((e) => e.request.Id === f.Id);
        if (!entry) continue;
        const code = f.Code ?? 'Unknown';
        const message = f.Message ?? '';
        // A sender fault (bad message) fails the same way every time: don't retry it.
        if (f.SenderFault) failed.push(failure(queueUrl, entry, code, message, true));
        else retryable.push({ entry, code, message });
      }
    } catch (err) {
      // The SDK already retried transient errors; one more round of ours is cheap
      // and covers throttling bursts across many queues.
      const e = err as Error;
      for (const entry of pending) retryable.push({ entry, code: e.name, message: e.message });
    }
    if (retryable.length === 0) break;
    if (attempt >= maxAttempts) {
      for (const r of retryable) failed.push(failure(queueUrl, r.entry, r.code, r.message, false));
      break;
    }
    await sleep(Math.random() * baseDelayMs * 2 ** (attempt - 1));
    pending = retryable.map((r) => r.entry);
  }
  return { sent, failed };
}

function failure(
  queueUrl: string,
  entry: Entry,
  code: string,
  message: string,
  senderFault: boolean,
): FailedEntry {
  const { bucket, key, sequencer } = entry.event;
  return { queueUrl, bucket, key, sequencer, code, message, senderFault };
}

/** Runs the tasks with at most `limit` in flight. */
async function runBounded(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const task = tasks[next++];
      if (task) await task();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}
