/**
 * Keeps a message invisible while its image is in progress: every third of
 * the visibility timeout, push the deadline a full timeout ahead. SQS caps a
 * message's total invisibility at 12 h from its receipt; the heartbeat stops
 * before that and says so (the redelivery will join the running job).
 */
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostQueue, ReceivedMessage } from '../queue/host-queue.js';

export const SQS_VISIBILITY_CAP_MS = 12 * 60 * 60 * 1000;

export interface HeartbeatOptions {
  visibilitySeconds: number;
  logger: Logger;
  onError: () => void;
  now?: () => number;
}

export class VisibilityHeartbeat {
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();

  constructor(
    private readonly queue: HostQueue,
    private readonly message: ReceivedMessage,
    private readonly opts: HeartbeatOptions,
  ) {}

  start(): void {
    const intervalMs = Math.max(1000, (this.opts.visibilitySeconds * 1000) / 3);
    this.timer = setInterval(() => {
      this.beating = this.beat();
    }, intervalMs);
  }

  /** Stop extending; waits for a beat in progress so it can't race a delete. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.beating;
  }

  private async beat(): Promise<void> {
    const now = (this.opts.now ?? Date.now)();
    const deadline = now + this.opts.visibilitySeconds * 1000;
    // A margin for clock skew and the request itself.
    if (deadline > this.message.receivedAt + SQS_VISIBILITY_CAP_MS - 60_000) {
      clearInterval(this.timer);
      this.opts.logger.warn(
        'image still running near the 12 h SQS visibility cap: the message will be redelivered and join this job',
        { messageId: this.message.messageId },
      );
      return;
    }
    try {
      await this.queue.setVisibility(this.message, this.opts.visibilitySeconds);
    } catch (err) {
      // The next beat tries again; if the message came back meanwhile, the
      // duplicate delivery waits for this job (per-key lock) and is dropped.
      this.opts.onError();
      this.opts.logger.warn('could not extend message visibility', {
        messageId: this.message.messageId,
        error: errorMessage(err),
      });
    }
  }
}
