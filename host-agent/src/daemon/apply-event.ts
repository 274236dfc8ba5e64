/**
 * One queue message → one outcome (message-outcome.ts records it and settles
 * the message). The message is parsed with the shared schema, checked
 * against the newest event applied for its key (stale and duplicate
 * deliveries are dropped), and applied through the same pipeline as
 * `thinrelay process-image`; a failure's outcome follows its class
 * (classifyFailure, the one rule). A signature sidecar's event
 * (`sidecar.put`) is no image: it wakes the image it signs, if that waits
 * for it (pipeline/signature-wake.ts).
 */
import {
  compareSequencers,
  ImageEventError,
  parseImageEvent,
  type ImageEvent,
} from '../../../schema/image-event.js';
import { AwaitingSignature, ImageError, errorMessage } from '../errors.js';
import { retireKey } from '../ops/retire.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { classifyFailure, failureCode, type FailureClass } from '../pipeline/failure.js';
import { processImage } from '../pipeline/process-image.js';
import { wakeAwaitingSignature } from '../pipeline/signature-wake.js';
import type { ReceivedMessage } from '../queue/host-queue.js';
import { databaseError } from '../store/db-errors.js';
import type { MessageOutcome } from '../store/events.js';
import { sidecarTarget } from '../trust/sidecar.js';
import { SQS_VISIBILITY_CAP_MS, type MessageResult } from './message-outcome.js';

/** A failure's outcome, by its class. */
const outcomeOfClass: Record<FailureClass, MessageOutcome> = {
  interrupted: 'released',
  // OBJECT_NOT_FOUND here: the key was deleted since; its delete event follows.
  superseded: 'superseded',
  transient: 'retrying',
  permanent: 'failed',
  awaiting: 'awaiting-signature',
};

/** Seconds until an awaiting image's deadline (plus a second), within what SQS allows. */
function untilDeadline(err: unknown): number | undefined {
  if (!(err instanceof AwaitingSignature)) return undefined;
  const capSeconds = SQS_VISIBILITY_CAP_MS / 1000 - 60;
  const seconds = Math.ceil((err.deadline.getTime() - Date.now()) / 1000) + 1;
  return Math.min(capSeconds, Math.max(1, seconds));
}

export async function applyMessage(
  deps: PipelineDeps,
  message: ReceivedMessage,
): Promise<MessageResult> {
  const seen = deps.store.events.message(message.messageId);
  if (seen?.outcome === 'failed') {
    // Already failed permanently here: hand it straight back so the redrive
    // policy moves it to the DLQ, without unpacking a hostile archive again.
    return {
      outcome: 'failed',
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
      event: null,
      reasonCode: 'INVALID_MESSAGE',
      reason: err.message,
    };
  }
  const applied = deps.store.events.applied(event.bucket, event.key);
  if (applied !== undefined && compareSequencers(event.sequencer, applied.sequencer) <= 0) {
    return {
      outcome: 'stale',
      event,
      reason: `sequencer ${event.sequencer} is not newer than the applied ${applied.sequencer} (${applied.kind})`,
    };
  }
  // A signature sidecar's event is about its image: wake it (the outcome is the image's).
  // The fan-out sends sidecar.put; a put or delete naming a sidecar key (an older
  // producer) is never taken for an image either.
  const sidecar = sidecarTarget(event.key);
  try {
    if (sidecar !== null) return await applySidecar(deps, event, sidecar.imageKey);
    switch (event.kind) {
      case 'image.put':
        return await applyPut(deps, event);
      case 'image.delete':
        return await applyDelete(deps, event);
      case 'sidecar.put':
        // Unreachable: the schema accepts sidecar.put only for a sidecar key.
        throw new ImageEventError('key', `${event.key} is not a sidecar key`);
    }
  } catch (err) {
    const typed = databaseError(err, deps.config.stateDir) ?? err;
    const retryAfterSeconds = untilDeadline(typed);
    return {
      outcome: outcomeOfClass[classifyFailure(typed, deps.signal)],
      event,
      reasonCode: failureCode(typed),
      reason: errorMessage(typed),
      ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }),
    };
  }
}

/**
 * A sidecar arrived (or changed): the images of the key it signs that wait
 * for a signature, or failed one, are evaluated again
 * (pipeline/signature-wake.ts). A sidecar's delete changes nothing here (a
 * held image is re-checked by `thinrelay verify`). Recorded as the sidecar
 * key's applied event once evaluated — ready, or a verdict that it does not
 * verify (a permanent failure) — so a duplicate delivery is stale, not a
 * second evaluation; a newer upload of the sidecar has a newer sequencer.
 */
async function applySidecar(
  deps: PipelineDeps,
  event: ImageEvent,
  imageKey: string,
): Promise<MessageResult> {
  let woken: number[] = [];
  if (event.kind !== 'image.delete') {
    try {
      woken = (await wakeAwaitingSignature(deps, event.bucket, imageKey)).imageIds;
    } catch (err) {
      if (classifyFailure(err, deps.signal) === 'permanent') recordApplied(deps, event, null);
      throw err;
    }
  }
  recordApplied(deps, event, woken.length === 1 ? woken[0]! : null);
  return {
    outcome: 'applied',
    event,
    reason:
      woken.length === 0
        ? `signature sidecar of ${imageKey}: no image here waits for it`
        : `signature sidecar of ${imageKey}: image(s) ${woken.join(', ')} ready`,
    ...(woken.length === 1 ? { imageId: woken[0]! } : {}),
  };
}

async function applyPut(deps: PipelineDeps, event: ImageEvent): Promise<MessageResult> {
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
    event,
    imageId: result.image.id,
    ...(reason === undefined ? {} : { reason }),
  };
}

async function applyDelete(deps: PipelineDeps, event: ImageEvent): Promise<MessageResult> {
  const retired = await retireKey(deps, event.bucket, event.key);
  recordApplied(deps, event, null);
  return {
    outcome: 'applied',
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

/** A message that waited behind its key while the agent began to stop: handed back unstarted. */
export function notStarted(): MessageResult {
  return { outcome: 'released', event: null, reason: 'agent stopping before this message started' };
}
