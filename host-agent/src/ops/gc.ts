/**
 * gc: reconcile (orphans and interrupted intents), then release failed
 * leftovers: volumes kept for inspection and content no image uses anymore.
 */
import type { PipelineDeps } from '../pipeline/context.js';
import { reconcile, type ReconcileAction } from '../pipeline/reconcile.js';
import { objectName } from '../storage/names.js';

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
    const unused =
      blob === undefined || blob.status !== 'ready' || store.blobs.liveImageCount(blob.id) === 0;
    if (!unused || store.objects.childrenOf(row.id).length > 0) continue;
    if (blob !== undefined) store.blobs.setStatus(blob.id, 'removed');
    await objects.remove(row);
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason: 'content no image uses',
    });
  }
  return actions;
}
