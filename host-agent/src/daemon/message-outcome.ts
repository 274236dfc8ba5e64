/**
 * One outcome per queue message, and the one place that acts on it. The
 * event's handling (apply-event.ts) ends in one MessageResult; a MessageLease
 * keeps the message invisible while it is handled, then records the outcome
 * (the message journal row, metrics, the log line, the fleet observer) and
 * settles the message the way that outcome says: deleted, or handed back at
 * once or after the retry delay. Nothing else deletes a message or changes
 * its visibility.
 */
import type { ImageEvent } from '../../../schema/image-event.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostQueue, ReceivedMessage } from '../queue/host-queue.js';
import type { MessageOutcome } from '../store/events.js';
import type { StateStore } from '../store/index.js';
import type { AgentMetrics } from './metrics.js';

/** What became of a message: the one value its handling returns. */
export interface MessageResult {
  outcome: MessageOutcome;
  /** The event it carried; null when it never became one here (invalid, failed before, not started). */
  event: ImageEvent | null;
  reasonCode?: string;
  reason?: string;
  /** put: the image id made ready. */
  imageId?: number;
  /** awaiting-signature: when the message should come back (the image's deadline). */
  retryAfterSeconds?: number;
}

/**
 * What each outcome does with its message. A failed one goes back at once:
 * its receive count brings it to the DLQ (the queue's redrive policy).
 */
const settlement: Record<MessageOutcome, 'delete' | 'hand back' | 'retry later'> = {
  applied: 'delete',
  stale: 'delete',
  superseded: 'delete',
  failed: 'hand back',
  retrying: 'retry later',
  released: 'hand back',
  // Kept, invisible until the image's signature deadline (capped by SQS at 12 h): at the
  // deadline it returns, and an image still unsigned fails SIGNATURE_MISSING through the
  // permanent-failure path (failed, metric, fleet item, DLQ) like any bad image. The
  // deadline is in the store and the message in SQS, so a restart loses neither; no worker
  // waits meanwhile. If the sidecar's event made it ready first, the message returns to
  // find it done and is deleted.
  'awaiting-signature': 'retry later',
};

/** SQS ends a message's invisibility 12 h after its receipt, whatever extends it. */
export const SQS_VISIBILITY_CAP_MS = 12 * 60 * 60 * 1000;

export interface LeaseOptions {
  queue: HostQueue;
  visibilitySeconds: number;
  /** Delay before a message that will be retried is offered again. */
  retryDelaySeconds: (receiveCount: number) => number;
  store: StateStore;
  metrics: AgentMetrics;
  logger: Logger;
  /** Told each recorded outcome, before the message is settled (the fleet table). */
  recorded?: ((result: MessageResult) => void) | undefined;
}

/** One received message, from receipt to its settling. */
export class MessageLease {
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();

  constructor(
    private readonly message: ReceivedMessage,
    private readonly opts: LeaseOptions,
  ) {}

  /**
   * Keep the message invisible while it is handled: every third of the
   * visibility timeout, push the deadline a full timeout ahead. Near SQS's
   * 12 h cap it stops and says so (the redelivery will join the running job).
   */
  extend(): void {
    const intervalMs = Math.max(1000, (this.opts.visibilitySeconds * 1000) / 3);
    this.timer = setInterval(() => {
      this.beating = this.beat();
    }, intervalMs);
  }

  /** Stop extending; waits for a beat in progress so it can't race the settle. */
  async stopExtending(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.beating;
  }

  /**
   * Record the outcome, then settle the message. A message whose outcome
   * could not be recorded is never deleted (that could lose it): it is
   * handed back to be retried. Returns the outcome as recorded.
   */
  async conclude(result: MessageResult): Promise<MessageResult> {
    let final = result;
    try {
      this.record(result);
    } catch (err) {
      this.opts.logger.error('could not record the outcome; the message is retried', {
        outcome: result.outcome,
        error: errorMessage(err),
      });
      final = { ...result, outcome: 'retrying' };
    }
    this.opts.recorded?.(final);
    await this.settle(final);
    return final;
  }

  private record(r: MessageResult): void {
    const { store, metrics, logger } = this.opts;
    const m = this.message;
    store.events.recordMessage({
      messageId: m.messageId,
      bucket: r.event?.bucket ?? null,
      key: r.event?.key ?? null,
      kind: r.event?.kind ?? null,
      sequencer: r.event?.sequencer ?? null,
      outcome: r.outcome,
      reasonCode: r.reasonCode ?? null,
      reason: r.reason ?? null,
    });
    metrics.messages.inc({ outcome: r.outcome });
    // A signature sidecar's event is no image: not counted as one processed.
    if (r.outcome === 'applied' && r.event?.kind !== 'sidecar.put') {
      metrics.imagesProcessed.inc({ kind: r.event?.kind ?? '' });
      metrics.imageDuration.observe((Date.now() - m.receivedAt) / 1000);
    }
    if (r.outcome === 'failed' || r.outcome === 'retrying') {
      metrics.imagesFailed.inc({
        reason: r.reasonCode ?? 'UNKNOWN',
        permanent: String(r.outcome === 'failed'),
      });
    }
    const fields = {
      outcome: r.outcome,
      kind: r.event?.kind,
      bucket: r.event?.bucket,
      key: r.event?.key,
      sequencer: r.event?.sequencer,
      receiveCount: m.receiveCount,
      code: r.reasonCode,
      reason: r.reason,
    };
    if (r.outcome === 'failed') logger.error('image event failed', fields);
    else if (r.outcome === 'retrying') logger.warn('image event will be retried', fields);
    else logger.info('image event handled', fields);
  }

  private async settle(r: MessageResult): Promise<void> {
    const { queue, logger } = this.opts;
    const how = settlement[r.outcome];
    try {
      if (how === 'delete') await queue.delete(this.message);
      else
        await queue.setVisibility(
          this.message,
          how === 'retry later'
            ? (r.retryAfterSeconds ?? this.opts.retryDelaySeconds(this.message.receiveCount))
            : 0,
        );
    } catch (err) {
      // The outcome is recorded: a redelivery is dropped as stale (or retried).
      logger.warn('could not settle message; SQS will redeliver it', {
        action: how === 'delete' ? 'delete' : 'release',
        error: errorMessage(err),
      });
    }
  }

  private async beat(): Promise<void> {
    const { queue, logger, metrics, visibilitySeconds } = this.opts;
    const deadline = Date.now() + visibilitySeconds * 1000;
    // A margin for clock skew and the request itself.
    if (deadline > this.message.receivedAt + SQS_VISIBILITY_CAP_MS - 60_000) {
      clearInterval(this.timer);
      logger.warn(
        'image still running near the 12 h SQS visibility cap: the message will be redelivered and join this job',
        { messageId: this.message.messageId },
      );
      return;
    }
    try {
      await queue.setVisibility(this.message, visibilitySeconds);
    } catch (err) {
      // The next beat tries again; if the message came back meanwhile, the
      // duplicate delivery waits for this job (per-key lock) and is dropped.
      metrics.heartbeatErrors.inc();
      logger.warn('could not extend message visibility', {
        messageId: this.message.messageId,
        error: errorMessage(err),
      });
    }
  }
}
