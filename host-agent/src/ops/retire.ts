/**
 * An image.delete event retires every image of the key: no new snapshots
 * (the images read as removed), snapshots nobody uses go now, one in use
 * (mounted, opened: the kernel says so) stays until its VM lets go, and gc
 * or the agent's next pool pass collects it and its layers then.
 */
import { TransientError } from '../errors.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { releaseImage } from '../pool/release.js';
import { collectGarbage } from './gc.js';

export interface RetireResult {
  imageIds: number[];
  /** Snapshots and layer volumes released. */
  removedObjects: number;
  keptActiveSnapshots: number;
}

export async function retireKey(
  deps: PipelineDeps,
  bucket: string,
  key: string,
): Promise<RetireResult> {
  const { store, logger } = deps;
  const result: RetireResult = { imageIds: [], removedObjects: 0, keptActiveSnapshots: 0 };
  for (const image of store.images.liveByKey(bucket, key)) {
    const released = await releaseImage(deps, image.id, {
      reason: 'deleted',
      snapshots: 'keep-in-use',
    });
    // Another process (a CLI process-image, an activation) is working on it: try again later.
    if (!released.released)
      throw new TransientError('STORAGE_FAILED', `${key}: ${released.why}; retiring it later`);
    result.imageIds.push(image.id);
    result.removedObjects += released.removedObjects;
    for (const snap of released.keptInUse) {
      result.keptActiveSnapshots++;
      logger.warn('image retired; its snapshot is in use and stays until released', {
        image: image.id,
        key,
        snapshot: snap.id,
        device: snap.device_path,
      });
    }
  }
  await collectGarbage(deps);
  return result;
}
