/**
 * An image.delete event retires every image of the key: no new snapshots
 * (the images read as removed), inactive snapshots go now, active ones stay
 * until an operator (or the VM manager) releases them — a running VM may
 * still use them — and gc collects the volume once no snapshot uses it.
 */
import { TransientError } from '../errors.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { collectGarbage } from './gc.js';

export interface RetireResult {
  imageIds: number[];
  removedSnapshots: number;
  keptActiveSnapshots: number;
}

export async function retireKey(
  deps: PipelineDeps,
  bucket: string,
  key: string,
): Promise<RetireResult> {
  const { store, objects, logger } = deps;
  const result: RetireResult = { imageIds: [], removedSnapshots: 0, keptActiveSnapshots: 0 };
  for (const image of store.images.liveByKey(bucket, key)) {
    if (store.jobs.openForImage(image.id) !== undefined) {
      // Another process (a CLI process-image) is working on it: try again later.
      throw new TransientError(
        'STORAGE_FAILED',
        `image ${image.id} (${key}) is being processed by another process; retiring it later`,
      );
    }
    store.images.setStatus(image.id, 'removed');
    result.imageIds.push(image.id);
    for (const snap of store.objects.snapshotsOfImage(image.id)) {
      if (snap.state === 'active') {
        result.keptActiveSnapshots++;
        logger.warn('image retired; its active snapshot stays until released', {
          image: image.id,
          key,
          snapshot: snap.id,
          hint: `thinrelay deactivate ${snap.id} && thinrelay gc`,
        });
        continue;
      }
      await objects.remove(snap);
      result.removedSnapshots++;
    }
  }
  await collectGarbage(deps);
  return result;
}
