/**
 * gc: reconcile (orphans and interrupted intents), then release failed
 * leftovers and what removed images left: volumes kept for inspection,
 * snapshots of removed images nobody uses any more, and layers no image
 * uses (a layer shared by a live image, even one that failed and may be
 * retried, stays), and the spools of jobs no live process runs (kill -9
 * while spooling). The operator's `thinrelay gc` also releases the volumes
 * failed images hold for a new signature (a re-sign then downloads again);
 * the gc a delete event runs leaves them to their images.
 */
import type { PipelineDeps } from '../pipeline/context.js';
import { reconcile, type ReconcileAction } from '../pipeline/reconcile.js';
import { collectReleased, releaseHeldForSignature } from '../pool/release.js';
import { objectName } from '../storage/names.js';
import { reclaimSpools } from './spools.js';

export async function collectGarbage(
  deps: PipelineDeps,
  opts: { heldForSignature?: boolean } = {},
): Promise<ReconcileAction[]> {
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
  if (opts.heldForSignature === true) actions.push(...(await releaseHeldForSignature(deps)));
  actions.push(...(await collectReleased(deps)));
  actions.push(...reclaimSpools(deps));
  return actions;
}
