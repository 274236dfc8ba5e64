/** snapshot: a writable snapshot of the image's top layer's sealed volume. */
import type { JobContext, StepOutcome } from '../context.js';
import type { Step } from './index.js';

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image } = ctx;
  const existing = store.objects
    .forJob(job.id)
    .find((o) => o.kind === 'snapshot' && o.state !== 'removed');
  if (existing !== undefined)
    return { status: 'complete', detail: { snapshot: existing.id, resumed: true } };

  const blobId = store.images.topBlobId(image.id);
  const blob = blobId === undefined ? undefined : store.blobs.get(blobId);
  if (blob?.status !== 'ready' || blob.volume_id === null) {
    throw new Error(`image ${image.id} has no ready content to snapshot`);
  }
  const volume = store.objects.get(blob.volume_id)!;
  const snap = await ctx.objects.createSnapshot({ volume, imageId: image.id, jobId: job.id });
  return { status: 'complete', detail: { snapshot: snap.id, origin: volume.id } };
}

export const snapshotStep: Step = { name: 'snapshot', jobStatus: 'snapshotting', run };
