/**
 * The one seam where a signature sidecar's arrival reaches an image waiting
 * for it (`awaiting-signature`): the sidecar's queue event (apply-event.ts)
 * and the catch-up sync (a sidecar listed next to a waiting image, which
 * covers a lost event) both call wakeAwaitingSignature and nothing else.
 *
 * The gate that puts images in `awaiting-signature` and re-evaluates them is
 * the trust gate's (branch h/trust-gate); until it is merged no image can be
 * waiting, so there is nothing to wake and this reports none.
 */
import type { ImageRow } from '../store/images.js';
import type { PipelineDeps } from './context.js';

/** Does this image wait for its signature sidecar? (`awaiting-signature`, the gate's state.) */
export function awaitsSignature(image: Pick<ImageRow, 'status'>): boolean {
  return (image.status as string) === 'awaiting-signature';
}

export interface WakeResult {
  /** Images of `imageKey` that were waiting for a signature and were re-evaluated. */
  woken: number;
}

/** Re-evaluate the images of `imageKey` that wait for a signature; idempotent. */
export function wakeAwaitingSignature(
  deps: PipelineDeps,
  bucket: string,
  imageKey: string,
): Promise<WakeResult> {
  deps.logger.debug('signature sidecar: no image awaits a signature here', {
    bucket,
    imageKey,
  });
  return Promise.resolve({ woken: 0 });
}
