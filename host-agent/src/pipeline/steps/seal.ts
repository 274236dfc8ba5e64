/**
 * seal: unmount and detach the unpacked volume, then make its blob ready —
 * unless another volume already holds the same bytes (two keys, one
 * content), in which case the image shares that one and this copy goes.
 */
import type { JobContext, StepOutcome } from '../context.js';
import type { Step } from './index.js';

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image, objects } = ctx;
  const volume = store.objects
    .forJob(job.id)
    .find((o) => o.kind === 'volume' && (o.state === 'unpacked' || o.state === 'sealed'));
  if (volume === undefined)
    return { status: 'skipped', detail: { reason: 'no volume of its own' } };

  await objects.seal(volume);
  const blob = store.blobs.byVolume(volume.id)!;
  if (blob.sha256 === null) throw new Error(`blob ${blob.id} was sealed without a recorded sha256`);
  const sha256 = blob.sha256;

  const sharedWith = store.tx(() => {
    const fresh = store.blobs.get(blob.id)!;
    if (fresh.status === 'removed') return store.blobs.readyBySha256(sha256)?.id ?? null;
    const existing = store.blobs.readyBySha256(sha256);
    if (existing !== undefined && existing.id !== blob.id) {
      store.blobs.setStatus(blob.id, 'removed');
      store.images.setBlobs(image.id, [existing.id]);
      store.images.setStatus(image.id, 'processing', { sha256 });
      return existing.id;
    }
    store.blobs.setStatus(blob.id, 'ready');
    store.images.setStatus(image.id, 'processing', { sha256 });
    return null;
  });
  if (sharedWith !== null) {
    ctx.logger.info('identical content already unpacked: sharing it', { blob: sharedWith });
    await objects.remove(store.objects.get(volume.id)!);
  }
  return { status: 'complete', detail: { volume: volume.id, sha256, sharedWithBlob: sharedWith } };
}

export const sealStep: Step = { name: 'seal', jobStatus: 'unpacking', run };
