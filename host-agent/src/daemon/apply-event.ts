/**
 * One queue message → one decision. The message is parsed with the shared
 * schema, checked against the newest event applied for its key (stale and
 * duplicate deliveries are dropped), and applied through the same pipeline
 * as `thinrelay process-image`. The result says what to do with the message;
 * the caller does it only after this function has recorded the outcome.
 */
import {
  compareSequencers,
  ImageEventError,
  parseImageEvent,
  type ImageEvent,
} from '../../../schema/image-event.js';
import {
  EnvironmentError,
  ImageError,
  imageFailureCodes,
  SpaceExhaustedError,
  TransientError,
  type ImageFailureCode,
  UsageError,
  errorMessage,
  isThinrelayError,
} from '../errors.js';
import { retireKey } from '../ops/retire.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { processImage } from '../pipeline/process-image.js';
import type { ReceivedMessage } from '../queue/host-queue.js';
import { databaseError } from '../store/db-errors.js';
import type { MessageOutcome } from '../store/events.js';

/** delete: done with it; release: back to the queue after `delaySeconds`. */
export type MessageAction = { kind: 'delete' } | { kind: 'release'; delaySeconds: number };

export interface EventDecision {
  outcome: MessageOutcome;
  action: MessageAction;
  event: ImageEvent | null;
  reasonCode?: string;
  reason?: string;
  /** put: the image id made ready. */
  imageId?: number;
}

export type FailureClass = 'permanent' | 'transient' | 'superseded' | 'interrupted';

/**
 * Permanent: the image or message itself is bad — retrying cannot help, the
 * queue's redrive policy takes it to the DLQ — or the host stayed out of
 * space through the retry budget (THINRELAY_SPACE_ATTEMPTS). Transient: the network, S3,
 * this host (space, tools, configuration) — retry later. Superseded: the
 * object changed or vanished since the event; a newer event follows.
 */
export function classifyFailure(err: unknown, signal: AbortSignal): FailureClass {
  if (signal.aborted) return 'interrupted';
  if (err instanceof TransientError) return 'transient';
  // A space fault past its retry budget: failed with its reason, no longer retried.
  if (err instanceof SpaceExhaustedError) return 'permanent';
  if (err instanceof EnvironmentError || err instanceof UsageError) return 'transient';
  if (err instanceof ImageError) {
    if (err.code === 'INTERRUPTED') return 'interrupted';
    if (err.code === 'OBJECT_CHANGED' || err.code === 'OBJECT_NOT_FOUND') return 'superseded';
    if (err.code === 'DOWNLOAD_FAILED' || err.code === 'STORAGE_FAILED') return 'transient';
    return 'permanent';
  }
  // An unexpected error is most likely this host's (a tool, the disk): retry.
  return 'transient';
}

/**
 * Whether a failure recorded on an image (its reason code) was permanent, by
 * classifyFailure's rule: catch-up sync does not retry those at the same ETag.
 */
export function isPermanentFailureCode(code: string | null): boolean {
  const known = (imageFailureCodes as readonly string[]).includes(code ?? '');
  return (
    known &&
    classifyFailure(new ImageError(code as ImageFailureCode, ''), new AbortController().signal) ===
      'permanent'
  );
}

function codeOf(err: unknown): string {
  return isThinrelayError(err) ? err.code : 'INTERNAL';
}

export interface ApplyOptions {
  /** Delay before a transiently failed message is offered again. */
  retryDelaySeconds: (receiveCount: number) => number;
}

export async function applyMessage(
  deps: PipelineDeps,
  message: ReceivedMessage,
  opts: ApplyOptions,
): Promise<EventDecision> {
  const seen = deps.store.events.message(message.messageId);
  if (seen?.outcome === 'failed') {
    // Already failed permanently here: hand it straight back so the redrive
    // policy moves it to the DLQ, without unpacking a hostile archive again.
    return {
      outcome: 'failed',
      action: { kind: 'release', delaySeconds: 0 },
      event: null,
      reasonCode: seen.reason_code ?? undefined,
      reason: seen.reason ?? undefined,
    };
  }
  let event: ImageEvent;
  try {
    event = parseImageEvent(message.body);
  } catch (err) {
    if (!(err instanceof ImageEventError)) throw err;
    return {
      outcome: 'failed',
      action: { kind: 'release', delaySeconds: 0 },
      event: null,
      reasonCode: 'INVALID_MESSAGE',
      reason: err.message,
    };
  }
  const applied = deps.store.events.applied(event.bucket, event.key);
  if (applied !== undefined && compareSequencers(event.sequencer, applied.sequencer) <= 0) {
    return {
      outcome: 'stale',
      action: { kind: 'delete' },
      event,
      reason: `sequencer ${event.sequencer} is not newer than the applied ${applied.sequencer} (${applied.kind})`,
    };
  }
  try {
    return event.kind === 'image.put'
      ? await applyPut(deps, event)
      : await applyDelete(deps, event);
  } catch (err) {
    const typed = databaseError(err, deps.config.stateDir) ?? err;
    return decideFailure(typed, deps.signal, event, message, opts);
  }
}

async function applyPut(deps: PipelineDeps, event: ImageEvent): Promise<EventDecision> {
  const base = { bucket: event.bucket, key: event.key };
  let result;
  let reason: string | undefined;
  try {
    result = await processImage(
      deps,
      { ...base, versionId: event.versionId, eTag: event.eTag },
      { reconcile: false },
    );
  } catch (err) {
    if (!(err instanceof ImageError) || err.code !== 'OBJECT_CHANGED') throw err;
    // The key was overwritten since this event: its newest content is what
    // the key should hold, so process that (its own event will find it done).
    reason = `superseded: ${err.message}; processed the current object`;
    deps.logger.info('event superseded by a newer write: processing the current object', base);
    result = await processImage(deps, base, { reconcile: false });
  }
  recordApplied(deps, event, result.image.id);
  return {
    outcome: 'applied',
    action: { kind: 'delete' },
    event,
    imageId: result.image.id,
    ...(reason === undefined ? {} : { reason }),
  };
}

async function applyDelete(deps: PipelineDeps, event: ImageEvent): Promise<EventDecision> {
  const retired = await retireKey(deps, event.bucket, event.key);
  recordApplied(deps, event, null);
  return {
    outcome: 'applied',
    action: { kind: 'delete' },
    event,
    reason: `retired ${retired.imageIds.length} image(s); ${retired.keptActiveSnapshots} active snapshot(s) kept until released`,
  };
}

function recordApplied(deps: PipelineDeps, event: ImageEvent, imageId: number | null): void {
  const newer = deps.store.events.markApplied({
    bucket: event.bucket,
    key: event.key,
    sequencer: event.sequencer,
    kind: event.kind,
    imageId,
  });
  // Only another writer on this state dir could have recorded a newer one meanwhile.
  if (!newer)
    deps.logger.warn('a newer event for this key was recorded meanwhile; kept it', {
      key: event.key,
      sequencer: event.sequencer,
    });
}

function decideFailure(
  err: unknown,
  signal: AbortSignal,
  event: ImageEvent,
  message: ReceivedMessage,
  opts: ApplyOptions,
): EventDecision {
  const release = (delaySeconds: number): MessageAction => ({ kind: 'release', delaySeconds });
  const [outcome, action]: [MessageOutcome, MessageAction] = (() => {
    switch (classifyFailure(err, signal)) {
      case 'interrupted':
        return ['released', release(0)];
      case 'superseded':
        // OBJECT_NOT_FOUND here: the key was deleted since; its delete event follows.
        return ['superseded', { kind: 'delete' }];
      case 'transient':
        return ['retrying', release(opts.retryDelaySeconds(message.receiveCount))];
      case 'permanent':
        return ['failed', release(0)];
    }
  })();
  return { outcome, action, event, reasonCode: codeOf(err), reason: errorMessage(err) };
}
