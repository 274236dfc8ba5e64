/**
 * seal: make sure every volume this job unpacked is sealed and its layer
 * ready (or shared with an identical one). The unpack step seals each layer
 * as it goes; this finishes what a crash, or a job begun by an earlier
 * version that sealed here, left between "flushed" and "ready". The unpack
 * step runs the same sealing first when it resumes (sealLeftovers).
 */
import type { BlobRow } from '../../store/blobs.js';
import { trustGate } from '../../trust/gate.js';
import type { JobContext, StepOutcome } from '../context.js';
import { finishLayer } from '../layer-unit.js';
import type { Step } from './index.js';

/**
 * Seal the job's applied, flushed layers not yet ready. Returns the ready
 * blobs, and the flat tar's layer if one was among them: it completes the
 * image (its digest is recorded with it).
 */
export async function sealLeftovers(
  ctx: JobContext,
): Promise<{ sealed: number[]; flat: BlobRow | null }> {
  const { store, job, image } = ctx;
  const sealed: number[] = [];
  let flat: BlobRow | null = null;
  for (const volume of store.objects.forJob(job.id)) {
    if (volume.kind !== 'volume' || (volume.state !== 'unpacked' && volume.state !== 'sealed'))
      continue;
    const blob = store.blobs.byVolume(volume.id);
    if (blob?.status !== 'unpacking') continue;
    // A flat tar's volume left unsealed by a crash: its signature is checked before the seal.
    if (blob.sha256 !== null)
      await trustGate(ctx, { manifestDigest: null, objectSha256: blob.sha256 });
    const ready = await finishLayer(ctx, volume);
    sealed.push(ready.id);
    // A flat tar's one volume (the only kind an earlier version left here).
    if (blob.sha256 !== null) {
      store.tx(() => {
        store.images.setBlobs(image.id, [ready.id]);
        store.images.recordDigest(image.id, blob.sha256);
      });
      flat = ready;
    }
  }
  return { sealed, flat };
}

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { sealed } = await sealLeftovers(ctx);
  return { status: 'complete', detail: { sealedLayers: sealed } };
}

export const sealStep: Step = { name: 'seal', jobStatus: 'unpacking', run };
