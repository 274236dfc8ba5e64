/**
 * The one seam where a signature sidecar's arrival reaches the image it
 * signs: the sidecar's queue event (daemon/apply-event.ts) and the catch-up
 * sync (a sidecar listed next to a waiting image, which covers a lost event)
 * both call wakeAwaitingSignature. Every live version of the key that waits
 * for its signature (`awaiting-signature`) or failed one (SIGNATURE_*: a
 * re-signed image) is processed again through the pipeline, whose trust
 * gate reads the sidecar now in the bucket.
 */
import type { ImageRow } from '../store/images.js';
import type { PipelineDeps } from './context.js';
import { processImage } from './process-image.js';

export interface WakeResult {
  /** The images made ready. */
  imageIds: number[];
}

/** Does this image wait for its signature sidecar? */
export function awaitsSignature(image: Pick<ImageRow, 'status'>): boolean {
  return image.status === 'awaiting-signature';
}

/** Does a (new) sidecar give this image another chance? */
function wantsSignature(image: ImageRow): boolean {
  return (
    awaitsSignature(image) ||
    (image.status === 'failed' && (image.error_code ?? '').startsWith('SIGNATURE_'))
  );
}

/**
 * Evaluate the waiting images of `imageKey` again; idempotent (a ready one is
 * left alone). Throws what processing throws (a signature that does not
 * verify is the image's permanent failure; still none: AwaitingSignature).
 */
export async function wakeAwaitingSignature(
  deps: PipelineDeps,
  bucket: string,
  imageKey: string,
): Promise<WakeResult> {
  const imageIds: number[] = [];
  for (const image of deps.store.images.liveByKey(bucket, imageKey).filter(wantsSignature)) {
    deps.logger.info('signature sidecar arrived: evaluating its image again', {
      image: image.id,
      imageKey,
    });
    const r = await processImage(
      deps,
      { bucket, key: imageKey, versionId: image.version_id, eTag: image.etag },
      { reconcile: false },
    );
    imageIds.push(r.image.id);
  }
  return { imageIds };
}
