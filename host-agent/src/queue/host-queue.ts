/**
 * This host's SQS queue, as the daemon uses it: receive, extend or end a
 * message's invisibility, delete. One class so the daemon never builds SQS
 * requests itself and every call has the same attribute handling.
 */
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs';

export interface ReceivedMessage {
  messageId: string;
  receiptHandle: string;
  body: string;
  /** ApproximateReceiveCount: 1 on the first delivery. */
  receiveCount: number;
  /** When SQS accepted the message (SentTimestamp), ms since the epoch. */
  sentAt: number;
  /** When this receive returned it, ms since the epoch. */
  receivedAt: number;
}

export interface ReceiveOptions {
  maxMessages: number;
  waitSeconds: number;
  visibilitySeconds: number;
  signal?: AbortSignal;
}

export class HostQueue {
  constructor(
    readonly sqs: SQSClient,
    /** Changes only when a group agent recreates its deleted queue (fleet/registered-queue.ts). */
    public url: string,
  ) {}

  async receive(opts: ReceiveOptions): Promise<ReceivedMessage[]> {
    const out = await this.sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: this.url,
        MaxNumberOfMessages: Math.min(10, Math.max(1, opts.maxMessages)),
        WaitTimeSeconds: opts.waitSeconds,
        VisibilityTimeout: opts.visibilitySeconds,
        // Both spellings: SQS prefers the second, some emulators read only the first.
        AttributeNames: ['All'],
        MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
      }),
      { abortSignal: opts.signal },
    );
    const now = Date.now();
    return (out.Messages ?? []).flatMap((m) => toReceived(m, now));
  }

  /** Keep the message invisible for `seconds` more from now (0 = hand it back at once). */
  async setVisibility(m: ReceivedMessage, seconds: number): Promise<void> {
    await this.sqs.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: this.url,
        ReceiptHandle: m.receiptHandle,
        VisibilityTimeout: seconds,
      }),
    );
  }

  async delete(m: ReceivedMessage): Promise<void> {
    await this.sqs.send(
      new DeleteMessageCommand({ QueueUrl: this.url, ReceiptHandle: m.receiptHandle }),
    );
  }
}

function toReceived(m: Message, now: number): ReceivedMessage[] {
  if (m.MessageId === undefined || m.ReceiptHandle === undefined) return [];
  const attr = m.Attributes ?? {};
  return [
    {
      messageId: m.MessageId,
      receiptHandle: m.ReceiptHandle,
      body: m.Body ?? '',
      receiveCount: Number(attr.ApproximateReceiveCount ?? '1'),
      sentAt: Number(attr.SentTimestamp ?? String(now)),
      receivedAt: now,
    },
  ];
}
