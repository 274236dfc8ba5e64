/**
 * snapshot: a writable snapshot of the image's top layer's sealed volume.
 * A ready image with no snapshot left gets its new one here too
 * (process-image.ts, ensureActive).
 */
import type { ImageRow } from '../../store/images.js';
import type { StorageObjectRow } from '../../store/objects.js';
import type { JobContext, PipelineDeps, StepOutcome } from '../context.js';
import type { Step } from './index.js';
import { InternalError } from '../../errors.js';

/** A new snapshot of the image's top layer; jobId: the job that makes it, null outside one. */
export async function snapshotImage(
  ctx: Pick<PipelineDeps, 'store' | 'objects'>,
  image: Pick<ImageRow, 'id'>,
  jobId: number | null,
): Promise<StorageObjectRow> {
  const { store } = ctx;
  const blobId = store.images.topBlobId(image.id);
  const blob = blobId === undefined ? undefined : store.blobs.get(blobId);
  if (blob?.status !== 'ready' || blob.volume_id === null) {
    throw new InternalError(`image ${image.id} has no ready content to snapshot`);
  }
  const volume = store.objects.get(blob.volume_id)!;
  return ctx.objects.createSnapshot({ volume, imageId: image.id, jobId });
}

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image } = ctx;
  const existing = store.objects
    .forJob(job.id)
    .find((o) => o.kind === 'snapshot' && o.state !== 'removed');
  if (existing !== undefined)
    return { status: 'complete', detail: { snapshot: existing.id, resumed: true } };
  const snap = await snapshotImage(ctx, image, job.id);
  return { status: 'complete', detail: { snapshot: snap.id, origin: snap.parent_id } };
}

export const snapshotStep: Step = { name: 'snapshot', jobStatus: 'snapshotting', run };
