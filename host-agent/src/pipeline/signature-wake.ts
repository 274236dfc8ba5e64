/**
 * The one seam where a signature sidecar's arrival reaches the image it
 * signs: the sidecar's queue event (daemon/apply-event.ts) and the catch-up
 * sync (a sidecar listed next to a waiting image, which covers a lost event)
 * both call wakeAwaitingSignature. Every live version of the key that waits
 * for its signature (`awaiting-signature`) or failed one (SIGNATURE_*: a
 * re-signed image) is processed again through the pipeline, whose trust
 * gate reads the sidecar now in the bucket. A flat tar that failed its check
 * kept its unpacked volume (pipeline/failure.ts): the new check reads the
 * recorded sha256, not the object.
 */
import { sameETag } from '../../../schema/etag.js';
import type { ImageRow } from '../store/images.js';
import type { SidecarSeen } from '../trust/gate.js';
import { sidecarKeysOf } from '../trust/sidecar.js';
import type { TrustRecord } from '../trust/trust-record.js';
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

/** Did this image fail its signature check (SIGNATURE_*)? */
export function failedSignature(image: Pick<ImageRow, 'status' | 'error_code'>): boolean {
  return image.status === 'failed' && (image.error_code ?? '').startsWith('SIGNATURE_');
}

/** Does a (new) sidecar give this image another chance? */
function wantsSignature(image: ImageRow): boolean {
  return awaitsSignature(image) || failedSignature(image);
}

/**
 * A failed signature check made against another sidecar than the one listed
 * now — its key (the one the gate would read: a bundle before a .sig) or its
 * ETag differs, or none was read: the image was re-signed, and its event may
 * have been lost. What the catch-up sync wakes it for.
 */
export function resignedSince(
  image: Pick<ImageRow, 'status' | 'error_code' | 'key' | 'trust'>,
  listed: readonly SidecarSeen[],
): boolean {
  if (!failedSignature(image)) return false;
  const current = sidecarKeysOf(image.key)
    .map(({ key }) => listed.find((l) => l.key === key))
    .find((l) => l !== undefined);
  // A listing without an ETag cannot tell a new upload: left to its event.
  if (current === undefined || current.eTag === null) return false;
  const checked = image.trust === null ? null : (JSON.parse(image.trust) as TrustRecord | null);
  if (checked?.sidecar !== current.key) return true;
  return (
    checked.sidecarETag === undefined ||
    checked.sidecarETag === null ||
    !sameETag(checked.sidecarETag, current.eTag)
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
