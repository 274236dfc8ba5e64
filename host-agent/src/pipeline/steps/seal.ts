/**
 * seal: make sure every volume this job unpacked is sealed and its layer
 * ready (or shared with an identical one). The unpack step seals each layer
 * as it goes; this finishes what a crash, or a job begun by an earlier
 * version that sealed here, left between "flushed" and "ready".
 */
import type { JobContext, StepOutcome } from '../context.js';
import { finishLayer } from '../layer-unit.js';
import type { Step } from './index.js';

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image } = ctx;
  const pending = store.objects
    .forJob(job.id)
    .filter(
      (o) =>
        o.kind === 'volume' &&
        (o.state === 'unpacked' || o.state === 'sealed') &&
        store.blobs.byVolume(o.id)?.status === 'unpacking',
    );
  const sealed: number[] = [];
  for (const volume of pending) {
    const blob = store.blobs.byVolume(volume.id)!;
    const ready = await finishLayer(ctx, volume);
    sealed.push(ready.id);
    // A flat tar's one volume (the only kind an earlier version left here).
    if (blob.sha256 !== null)
      store.tx(() => {
        store.images.setBlobs(image.id, [ready.id]);
        store.images.recordDigest(image.id, blob.sha256);
      });
  }
  return { status: 'complete', detail: { sealedLayers: sealed } };
}

export const sealStep: Step = { name: 'seal', jobStatus: 'unpacking', run };
