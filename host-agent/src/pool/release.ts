/**
 * Releasing an image and what only it holds: the one crash-safe path that
 * `remove`, a bucket delete, retention and eviction all take. The image is
 * recorded removed (with why) first, in one transaction that refuses while
 * a job or an activation is working on it (a job whose process died is
 * ended as INTERRUPTED instead); then its snapshots go (those the
 * kernel says are in use stay, unless forced), then each of its layers no
 * live image links and no snapshot is taken of. Every storage change goes
 * through the ObjectManager, so a kill -9 anywhere leaves intents and
 * leftovers that reconcile and collectReleased() finish: the image is
 * removed, never half.
 */
import { failpoint } from '../failpoints.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { RemovedReason } from '../store/states.js';
import type { StorageObjectRow } from '../store/objects.js';
import { objectName } from '../storage/names.js';
import { devicesInUse } from '../sys/device-use.js';
import { isOwnerAlive } from '../store/owner.js';

export type SnapshotRule =
  /** Policy and bucket deletes: a snapshot the kernel says is in use stays (collected once released). */
  | 'keep-in-use'
  /** `remove --force`: every snapshot goes. */
  | 'remove-all';

export interface ReleaseOptions {
  reason: RemovedReason;
  detail?: Record<string, unknown> | null;
  snapshots: SnapshotRule;
}

export type ReleaseResult =
  | { released: true; removedObjects: number; keptInUse: StorageObjectRow[] }
  | { released: false; why: string };

/** What collectReleased and gc did, for logs and reports. */
export interface ReleaseAction {
  object: string;
  action: 'removed';
  reason: string;
}

/** Active snapshots' devices that are in use now (kernel), by object id. */
export function snapshotsInUse(rows: readonly StorageObjectRow[]): Map<number, string> {
  const withDevice = rows.filter((r) => r.state === 'active' && r.device_path !== null);
  const used = devicesInUse(withDevice.map((r) => r.device_path!));
  const out = new Map<number, string>();
  for (const r of withDevice) {
    const why = used.get(r.device_path!);
    if (why !== undefined) out.set(r.id, `${r.device_path} ${why}`);
  }
  return out;
}

/**
 * Record the image removed for `reason` and release its storage. Not
 * released (nothing changed) while a live job or an activation works on it.
 */
export async function releaseImage(
  deps: Pick<PipelineDeps, 'store' | 'objects' | 'logger'>,
  imageId: number,
  opts: ReleaseOptions,
): Promise<ReleaseResult> {
  const { store, objects } = deps;
  const marked = store.tx((): string | null => {
    const image = store.images.get(imageId);
    if (image === undefined) return `image ${imageId} does not exist`;
    const job = store.jobs.openForImage(imageId);
    if (job !== undefined) {
      if (isOwnerAlive(job.owner)) return `image ${imageId} is being processed`;
      // Its process died (kill -9): nothing is processing it, and a job left
      // open would be resumed for an image that is gone. It ends here; its
      // storage is released below and by reconcile, its spool by gc.
      const failure = {
        code: 'INTERRUPTED',
        message: `interrupted (its process died); the image was then ${opts.reason}`,
      };
      for (const step of store.jobs.steps(job.id))
        if (step.status === 'running')
          store.jobs.setStep(job.id, step.position, 'failed', { error: failure });
      store.jobs.setStatus(job.id, 'failed', failure);
    }
    // An activation in flight wins over policy: its intent was committed first. An
    // operator's `remove --force` wins over it instead (the activation fails NOT_FOUND).
    if (
      opts.snapshots === 'keep-in-use' &&
      store.objects
        .snapshotsOfImage(imageId)
        .some((s) => s.state === 'creating' || s.state === 'activating')
    )
      return `a snapshot of image ${imageId} is being activated`;
    if (image.status !== 'removed') store.images.retire(imageId, opts.reason, opts.detail ?? null);
    return null;
  });
  if (marked !== null) return { released: false, why: marked };
  failpoint('evict:marked');

  let removed = 0;
  const snaps = store.objects.snapshotsOfImage(imageId);
  const inUse =
    opts.snapshots === 'keep-in-use' ? snapshotsInUse(snaps) : new Map<number, string>();
  const keptInUse: StorageObjectRow[] = [];
  for (const snap of snaps) {
    if (inUse.has(snap.id)) {
      keptInUse.push(snap);
      continue;
    }
    if (await objects.remove(snap)) removed++;
  }
  failpoint('evict:snapshots-removed');
  // Top layer first; a layer's volume is independent of the one it was cloned from.
  for (const blobId of store.images.blobIds(imageId).reverse()) {
    const volume = releaseBlobIfUnused(deps, blobId);
    if (volume !== undefined && (await objects.remove(volume))) removed++;
  }
  return { released: true, removedObjects: removed, keptInUse };
}

/**
 * Mark a layer removed if no live image (other than `except`) links it, no
 * containerd snapshot holds it, and no snapshot is taken of its volume: decided and marked in one transaction,
 * so a job that links it meanwhile keeps it. Returns its volume to remove.
 */
export function releaseBlobIfUnused(
  deps: Pick<PipelineDeps, 'store'>,
  blobId: number,
  except: number | null = null,
): StorageObjectRow | undefined {
  const { store } = deps;
  return store.tx(() => {
    const blob = store.blobs.get(blobId);
    if (blob === undefined || blob.status === 'removed') return undefined;
    if (store.blobs.liveImageCount(blobId, except) > 0 || blob.volume_id === null) return undefined;
    if (store.containerdSnapshots.holdersOfBlob(blobId) > 0) return undefined;
    const row = store.objects.get(blob.volume_id)!;
    if (hasSnapshots(deps, row.id)) return undefined;
    store.blobs.setStatus(blobId, 'removed');
    return row;
  });
}

/** Snapshots (of any image) still taken of this volume; cloned layer volumes do not count. */
export function hasSnapshots(deps: Pick<PipelineDeps, 'store'>, volumeId: number): boolean {
  return deps.store.objects.childrenOf(volumeId).some((c) => c.kind === 'snapshot');
}

/**
 * Sealed layers no live image uses (a retired image's, a failed job's):
 * release each, top layers first.
 */
export async function releaseUnusedLayers(
  deps: Pick<PipelineDeps, 'store' | 'objects'>,
): Promise<ReleaseAction[]> {
  const { store, objects } = deps;
  const actions: ReleaseAction[] = [];
  for (const row of store.objects.unusedSealedVolumes()) {
    const blob = store.blobs.byVolume(row.id);
    // Decided and marked in one transaction: a job linking this layer waits for it, then rebuilds.
    const released = store.tx(() => {
      const fresh = blob === undefined ? undefined : store.blobs.get(blob.id);
      const unused =
        fresh === undefined ||
        fresh.status !== 'ready' ||
        (store.blobs.liveImageCount(fresh.id) === 0 &&
          store.containerdSnapshots.holdersOfBlob(fresh.id) === 0);
      if (!unused || hasSnapshots(deps, row.id)) return false;
      if (fresh !== undefined && fresh.status !== 'removed')
        store.blobs.setStatus(fresh.id, 'removed');
      return true;
    });
    if (!released || !(await objects.remove(row))) continue;
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

/**
 * What removed images left: their snapshots once nobody uses them (the
 * kernel says so; an inactive one is unused by definition), then the
 * layers no live image links. What finishes a release cut short by a crash,
 * and what collects a retired image's snapshot once its VM let go.
 */
export async function collectReleased(
  deps: Pick<PipelineDeps, 'store' | 'objects'>,
): Promise<ReleaseAction[]> {
  const { store, objects } = deps;
  const actions: ReleaseAction[] = [];
  const leftovers = store.objects.snapshotsOfRemovedImages();
  const inUse = snapshotsInUse(leftovers);
  for (const row of leftovers) {
    if (inUse.has(row.id) || !(await objects.remove(row))) continue;
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason: `${row.state} snapshot of a removed image, not in use`,
    });
  }
  actions.push(...(await releaseUnusedLayers(deps)));
  return actions;
}

/**
 * Volumes images hold for a new signature (a flat tar whose check failed,
 * pipeline/failure.ts): released, the images left failed — a later re-sign
 * then downloads them again. gc releases them as failed leftovers; an
 * eviction pass over its watermark before it evicts any image. Decided and
 * marked in one transaction (the layer failed), so a re-sign's job that
 * adopts the volume meanwhile keeps it; a crash after that leaves an
 * unpacked leftover that reconcile releases.
 */
export async function releaseHeldForSignature(
  deps: Pick<PipelineDeps, 'store' | 'objects'>,
): Promise<ReleaseAction[]> {
  const { store, objects } = deps;
  const actions: ReleaseAction[] = [];
  for (const row of store.objects.heldForSignature()) {
    const released = store.tx(() => {
      if (store.objects.heldForSignature({ volumeId: row.id }).length === 0) return false;
      const blob = store.blobs.byVolume(row.id)!;
      store.blobs.setStatus(blob.id, 'failed');
      return true;
    });
    if (!released || !(await objects.remove(row))) continue;
    actions.push({
      object: objectName(row.kind, row.id),
      action: 'removed',
      reason: 'unpacked volume a failed image held for a new signature',
    });
  }
  return actions;
}
