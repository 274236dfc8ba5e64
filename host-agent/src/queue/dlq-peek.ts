/**
 * Peeking at a dead-letter queue: what waits there, without consuming it.
 *
 * SQS has no "browse": the only read is ReceiveMessage, and every receive
 * adds one to the message's ApproximateReceiveCount. A peek receives each
 * message once: what it has seen is hidden for the rest of the peek
 * (VisibilityTimeout PEEK_HIDE_SECONDS), so later rounds bring only messages
 * not seen yet, and at the end every seen message is made visible again
 * (ChangeMessageVisibility 0), so a redrive right after a peek moves them.
 * Costs, stated in the output and in queue/README.md:
 * - one receive per message per peek: ApproximateReceiveCount +1 (on SQS;
 *   the local emulator also counts the visibility reset: +2). Harmless on a
 *   DLQ (it has no RedrivePolicy of its own, so nothing moves on), which is
 *   why a queue WITH a RedrivePolicy is refused: peeking there could push
 *   live messages into its DLQ. (Receiving with visibility 0, as before,
 *   received every message again in every round: +2 to +6 per peek.)
 * - SQS samples a subset of its servers per receive, and messages in flight
 *   (received by someone else) are invisible, so a peek may see fewer than
 *   ApproximateNumberOfMessages. We repeat rounds, dedupe by MessageId and stop
 *   when a round brings nothing new or at `max`.
 * - if the peek dies before the reset, the seen messages come back by
 *   themselves after PEEK_HIDE_SECONDS.
 */
import {
  ChangeMessageVisibilityBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { parseImageEvent, type ImageEvent } from '../../../schema/image-event.js';
import { UsageError, errorMessage } from '../errors.js';
import { mapSqsError } from './sqs-errors.js';

export const DEFAULT_PEEK_MAX = 50;
/** How long a peeked message stays hidden if the peek dies before making it visible again. */
export const PEEK_HIDE_SECONDS = 30;
/** Unparseable bodies are shown up to this many characters. */
export const BODY_PREVIEW_CHARS = 200;

export interface PeekedMessage {
  messageId: string;
  /** After this peek's own receive(s). */
  receiveCount: number | null;
  /** ISO 8601: when the message was sent to the DLQ's source (SentTimestamp). */
  sentAt: string | null;
  firstReceivedAt: string | null;
  /** The queue it was dead-lettered from, when SQS says (DeadLetterQueueSourceArn). */
  deadLetterSourceArn: string | null;
  event: ImageEvent | null;
  /** Why the body is not an image event (schema error); null when it is one. */
  bodyError: string | null;
  /** The body, truncated, when it is not an image event. */
  bodyPreview: string | null;
}

export interface PeekResult {
  queueUrl: string;
  /** GetQueueAttributes before the peek: visible messages. */
  approximateNumberOfMessages: number | null;
  /** In flight elsewhere: a peek cannot see these. */
  approximateNumberNotVisible: number | null;
  messages: PeekedMessage[];
  /** Why we stopped: a round brought nothing new, or `max` was reached. */
  stoppedBy: 'nothing-new' | 'max';
  rounds: number;
}

export interface PeekOptions {
  max?: number;
}

export async function peekQueue(
  sqs: SQSClient,
  queueUrl: string,
  opts: PeekOptions = {},
): Promise<PeekResult> {
  const max = opts.max ?? DEFAULT_PEEK_MAX;
  const attributes = await sqs
    .send(
      new GetQueueAttributesCommand({
        QueueUrl: queueUrl,
        AttributeNames: [
          'ApproximateNumberOfMessages',
          'ApproximateNumberOfMessagesNotVisible',
          'RedrivePolicy',
        ],
      }),
    )
    .catch((err: unknown) => {
      throw mapSqsError(err, `GetQueueAttributes ${queueUrl}`);
    });
  const attrs = attributes.Attributes ?? {};
  if (attrs.RedrivePolicy !== undefined && attrs.RedrivePolicy !== '') {
    throw new UsageError(
      'NOT_A_DLQ',
      `${queueUrl} has a RedrivePolicy of its own: peeking counts as a receive and could move its messages to its DLQ`,
      'peek at the DLQ itself (the deadLetterTargetArn of that policy)',
    );
  }
  const seen = new Map<string, PeekedMessage>();
  /** Receipt handles of the messages this peek hid, to show them again. */
  const hidden: string[] = [];
  let rounds = 0;
  let stoppedBy: PeekResult['stoppedBy'] = 'nothing-new';
  for (;;) {
    if (seen.size >= max) {
      stoppedBy = 'max';
      break;
    }
    rounds++;
    const out = await sqs
      .send(
        new ReceiveMessageCommand({
          QueueUrl: queueUrl,
          MaxNumberOfMessages: 10,
          WaitTimeSeconds: 0,
          VisibilityTimeout: PEEK_HIDE_SECONDS,
          // The current name and the deprecated one: emulators honour only the latter.
          MessageSystemAttributeNames: ['All'],
          AttributeNames: ['All'],
          MessageAttributeNames: ['All'],
        }),
      )
      .catch((err: unknown) => {
        throw mapSqsError(err, `ReceiveMessage ${queueUrl}`);
      });
    let fresh = 0;
    for (const m of out.Messages ?? []) {
      if (m.ReceiptHandle !== undefined) hidden.push(m.ReceiptHandle);
      const id = m.MessageId;
      if (id === undefined) continue;
      const known = seen.get(id);
      const peeked = toPeeked(m, id);
      // Keep the latest receive count; the rest of a message never changes.
      if (known !== undefined) known.receiveCount = peeked.receiveCount;
      else if (seen.size < max) {
        seen.set(id, peeked);
        fresh++;
      }
    }
    if (fresh === 0) break;
  }
  await showAgain(sqs, queueUrl, hidden);
  return {
    queueUrl,
    approximateNumberOfMessages: toInt(attrs.ApproximateNumberOfMessages),
    approximateNumberNotVisible: toInt(attrs.ApproximateNumberOfMessagesNotVisible),
    messages: [...seen.values()],
    stoppedBy,
    rounds,
  };
}

/** Makes the messages this peek hid visible again, ten per call (SQS's batch limit). */
async function showAgain(sqs: SQSClient, queueUrl: string, handles: string[]): Promise<void> {
  for (let i = 0; i < handles.length; i += 10) {
    const batch = handles.slice(i, i + 10);
    await sqs
      .send(
        new ChangeMessageVisibilityBatchCommand({
          QueueUrl: queueUrl,
          Entries: batch.map((h, j) => ({ Id: String(j), ReceiptHandle: h, VisibilityTimeout: 0 })),
        }),
      )
      .catch((err: unknown) => {
        throw mapSqsError(err, `ChangeMessageVisibilityBatch ${queueUrl}`);
      });
  }
}

function toPeeked(m: Message, messageId: string): PeekedMessage {
  const a = m.Attributes ?? {};
  const body = m.Body ?? '';
  let event: ImageEvent | null = null;
  let bodyError: string | null = null;
  try {
    event = parseImageEvent(body);
  } catch (err) {
    bodyError = errorMessage(err);
  }
  return {
    messageId,
    receiveCount: toInt(a.ApproximateReceiveCount),
    sentAt: toIso(a.SentTimestamp),
    firstReceivedAt: toIso(a.ApproximateFirstReceiveTimestamp),
    deadLetterSourceArn: a.DeadLetterQueueSourceArn ?? null,
    event,
    bodyError,
    bodyPreview:
      event === null
        ? body.length > BODY_PREVIEW_CHARS
          ? `${body.slice(0, BODY_PREVIEW_CHARS)}…`
          : body
        : null,
  };
}

function toInt(v: string | undefined): number | null {
  if (v === undefined || v === '') return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

function toIso(ms: string | undefined): string | null {
  const n = toInt(ms);
  return n === null ? null : new Date(n).toISOString();
}
