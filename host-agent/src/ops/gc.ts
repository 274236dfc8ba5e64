/**
 * gc: reconcile (orphans and interrupted intents), then release failed
 * leftovers: volumes kept for inspection, and layers no image uses anymore
 * (a layer shared by a live image, even one that failed and may be retried,
 * stays).
 */
import type { PipelineDeps } from '../pipeline/context.js';
import { reconcile, type ReconcileAction } from '../pipeline/reconcile.js';
import { objectName } from '../storage/names.js';
import { hasSnapshots } from './image-ops.js';

export async function collectGarbage(deps: PipelineDeps): Promise<ReconcileAction[]> {
  const actions = await reconcile(deps);
  const { store, objects } = deps;
  for (const row of store.objects.listByState(['kept'])) {
    await objects.remove(row);
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason: 'failed volume kept for inspection',
    });
  }
  // Snapshots of retired images, once no longer active (see ops/retire.ts).
  for (const row of store.objects.listByState(['inactive'])) {
    const image = row.image_id === null ? undefined : store.images.get(row.image_id);
    if (image?.status !== 'removed') continue;
    await objects.remove(row);
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason: 'inactive snapshot of a retired image',
    });
  }
  for (const row of store.objects.listByState(['sealed'])) {
    const blob = store.blobs.byVolume(row.id);
    // Decided and marked in one transaction: a job linking this layer waits for it, then rebuilds.
    const released = store.tx(() => {
      const fresh = blob === undefined ? undefined : store.blobs.get(blob.id);
      const unused =
        fresh === undefined ||
        fresh.status !== 'ready' ||
        store.blobs.liveImageCount(fresh.id) === 0;
      if (!unused || hasSnapshots(deps, row.id)) return false;
      if (fresh !== undefined) store.blobs.setStatus(fresh.id, 'removed');
      return true;
    });
    if (!released) continue;
    await objects.remove(store.objects.get(row.id)!);
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason:
        blob?.chain_id === null || blob?.chain_id === undefined
          ? 'content no image uses'
          : `layer ${blob.depth} (${blob.chain_id}) no image uses`,
    });
  }
  return actions;
}
