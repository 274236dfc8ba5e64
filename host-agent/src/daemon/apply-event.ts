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
  imageKeyOf,
  parseImageEvent,
  type ImageEvent,
} from '../../../schema/image-event.js';
import { ImageError, errorMessage } from '../errors.js';
import { retireKey } from '../ops/retire.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { classifyFailure, failureCode, type FailureClass } from '../pipeline/failure.js';
import { processImage } from '../pipeline/process-image.js';
import { wakeAwaitingSignature } from '../pipeline/signature-wake.js';
import type { ReceivedMessage } from '../queue/host-queue.js';
import { databaseError } from '../store/db-errors.js';
import type { MessageOutcome } from '../store/events.js';
import type { MessageResult } from './message-outcome.js';

/** A failure's outcome, by its class. */
const outcomeOfClass: Record<FailureClass, MessageOutcome> = {
  interrupted: 'released',
  // OBJECT_NOT_FOUND here: the key was deleted since; its delete event follows.
  superseded: 'superseded',
  transient: 'retrying',
  permanent: 'failed',
};

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
  try {
    switch (event.kind) {
      case 'image.put':
        return await applyPut(deps, event);
      case 'image.delete':
        return await applyDelete(deps, event);
      case 'sidecar.put':
        return await applySidecar(deps, event);
    }
  } catch (err) {
    const typed = databaseError(err, deps.config.stateDir) ?? err;
    return {
      outcome: outcomeOfClass[classifyFailure(typed, deps.signal)],
      event,
      reasonCode: failureCode(typed),
      reason: errorMessage(typed),
    };
  }
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

/**
 * A signature arrived: the image it signs is re-evaluated if it waits for
 * one. Not recorded as the key's applied event: a sidecar holds no image, and
 * waking twice is harmless (the wake re-reads the bucket's current sidecar).
 */
async function applySidecar(deps: PipelineDeps, event: ImageEvent): Promise<MessageResult> {
  const imageKey = imageKeyOf(event);
  const { woken } = await wakeAwaitingSignature(deps, event.bucket, imageKey);
  return {
    outcome: 'applied',
    event,
    reason: `signature sidecar for ${imageKey}: ${woken} waiting image(s) woken`,
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
