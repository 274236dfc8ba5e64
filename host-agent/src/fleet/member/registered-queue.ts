/**
 * The host queue of a group agent: the daemon's HostQueue, plus recovery
 * when the queue is deleted from under it (QueueDoesNotExist on receive):
 * the queues are registered again and polling goes on. Events sent while it
 * was gone are lost; the caller's catch-up sync covers them.
 */
import type { SQSClient } from '@aws-sdk/client-sqs';
import { HostQueue, type ReceivedMessage, type ReceiveOptions } from '../../queue/host-queue.js';
import { isSqsNotFound } from '../../queue/sqs-errors.js';

export class RegisteredHostQueue extends HostQueue {
  constructor(
    sqs: SQSClient,
    url: string,
    /** Create the queues again; returns the queue URL. */
    private readonly recreate: () => Promise<string>,
  ) {
    super(sqs, url);
  }

  override async receive(opts: ReceiveOptions): Promise<ReceivedMessage[]> {
    try {
      return await super.receive(opts);
    } catch (err) {
      if (!isSqsNotFound(err) || opts.signal?.aborted === true) throw err;
      // A failure here (SQS refuses a name deleted < 60 s ago) goes to the
      // poll loop's backoff; the next receive tries again.
      this.url = await this.recreate();
      return [];
    }
  }
}
