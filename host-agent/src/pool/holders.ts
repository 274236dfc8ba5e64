/**
 * What holds the pool's space, image by image, and which images eviction may
 * take. An image is held, strongest first, because a snapshot of it is in
 * use (the kernel says so), it is pinned, a job is working on it (or it
 * waits for its signature), or it is
 * the current (newest ready) version of its key; what is left is evictable.
 * Bytes are the images' layers as unpacked (blob sizes), each layer counted
 * once under the strongest hold of the images that link it: an estimate
 * beside the pool's measured use, good for "what holds the space".
 */
import type { PipelineDeps } from '../pipeline/context.js';
import type { ImageRow } from '../store/images.js';
import { isOwnerAlive } from '../store/owner.js';
import type { PoolPolicy } from './policy.js';
import { snapshotsInUse } from './release.js';

export type Hold = 'in-use' | 'pinned' | 'busy' | 'current' | 'failed' | 'evictable';

/** Strongest first. */
const holdOrder: readonly Hold[] = ['in-use', 'pinned', 'busy', 'current', 'failed', 'evictable'];

export interface Holding {
  image: ImageRow;
  hold: Hold;
  /** Why (in use: the device and how; pinned: by what). */
  why: string | null;
  /** The image's layers, as unpacked. */
  bytes: number;
  /** Last activation or use, else when it was last changed: least recent goes first. */
  lastUseAt: string;
}

export interface HolderSummary {
  inUseBytes: number;
  pinnedBytes: number;
  busyBytes: number;
  currentBytes: number;
  failedBytes: number;
  evictableBytes: number;
  images: Record<Hold, number>;
}

/**
 * Every image that holds space: live ones, and removed ones whose snapshot
 * is still in use. Reads the kernel once for every active snapshot, and
 * records `last_used_at` for the images seen in use.
 */
export function holdings(
  deps: Pick<PipelineDeps, 'store'>,
  policy: Pick<PoolPolicy, 'pins'>,
  opts: { recordUse: boolean } = { recordUse: true },
): Holding[] {
  const { store } = deps;
  const active = store.objects
    .listByState(['active'])
    .filter((r) => r.kind === 'snapshot' && r.image_id !== null);
  const inUse = snapshotsInUse(active);
  const usedBy = new Map<number, string>();
  for (const r of active) {
    const why = inUse.get(r.id);
    if (why !== undefined && !usedBy.has(r.image_id!)) usedBy.set(r.image_id!, why);
  }
  if (opts.recordUse && usedBy.size > 0) store.tx(() => store.images.touchUsed([...usedBy.keys()]));
  const images = store.images
    .list({ includeRemoved: usedBy.size > 0 })
    .filter((i) => i.status !== 'removed' || usedBy.has(i.id));
  return images.map((image) => {
    const { hold, why } = holdOf(deps, image, usedBy.get(image.id), policy.pins);
    const layers = store.images.layers(image.id);
    return {
      image,
      hold,
      why,
      bytes: layers.reduce((n, l) => n + bytesOnDisk(deps, l.blob_id), 0),
      lastUseAt: latest(image.last_used_at, image.last_activated_at) ?? image.updated_at,
    };
  });
}

/**
 * A layer's bytes while its volume holds them: ready, or unpacked and held
 * for a new signature (a failed flat tar, pipeline/failure.ts); a failed or
 * removed one holds none.
 */
function bytesOnDisk(deps: Pick<PipelineDeps, 'store'>, blobId: number): number {
  const blob = deps.store.blobs.get(blobId);
  return blob?.status === 'ready' || blob?.status === 'unpacking' ? (blob.size ?? 0) : 0;
}

function latest(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return a > b ? a : b;
}

function holdOf(
  deps: Pick<PipelineDeps, 'store'>,
  image: ImageRow,
  inUse: string | undefined,
  pins: readonly string[],
): { hold: Hold; why: string | null } {
  const { store } = deps;
  if (inUse !== undefined) return { hold: 'in-use', why: inUse };
  if (image.pinned === 1) return { hold: 'pinned', why: 'pinned image' };
  if (store.images.isPinned(image.id, pins)) return { hold: 'pinned', why: 'pinned key' };
  // An image waiting for its signature holds no bytes yet, but evicting it would drop the
  // rollout its sidecar is about to wake (it is never "current": that is the newest ready).
  if (
    image.status === 'pending' ||
    image.status === 'processing' ||
    image.status === 'awaiting-signature'
  )
    return { hold: 'busy', why: image.status };
  const job = store.jobs.openForImage(image.id);
  if (job !== undefined && isOwnerAlive(job.owner)) return { hold: 'busy', why: 'a job is open' };
  if (
    store.objects
      .snapshotsOfImage(image.id)
      .some((s) => s.state === 'creating' || s.state === 'activating')
  )
    return { hold: 'busy', why: 'being activated' };
  if (image.status === 'failed') return { hold: 'failed', why: image.error_code };
  if (store.images.isCurrent(image)) return { hold: 'current', why: null };
  return { hold: 'evictable', why: null };
}

/**
 * Eviction order: older versions before current ones, least recently
 * activated or used first; nothing in use, pinned, busy or failed.
 */
export function evictionOrder(all: readonly Holding[]): Holding[] {
  const tier = (h: Holding): number => (h.hold === 'evictable' ? 0 : 1);
  return all
    .filter((h) => h.hold === 'evictable' || h.hold === 'current')
    .sort(
      (a, b) =>
        tier(a) - tier(b) || a.lastUseAt.localeCompare(b.lastUseAt) || a.image.id - b.image.id,
    );
}

/** Bytes by hold, each layer once under the strongest hold of the images linking it. */
export function summarize(
  deps: Pick<PipelineDeps, 'store'>,
  all: readonly Holding[],
): HolderSummary {
  const byBlob = new Map<number, { hold: Hold; bytes: number }>();
  const images = Object.fromEntries(holdOrder.map((h) => [h, 0])) as Record<Hold, number>;
  for (const h of all) {
    images[h.hold]++;
    for (const l of deps.store.images.layers(h.image.id)) {
      const bytes = bytesOnDisk(deps, l.blob_id);
      const seen = byBlob.get(l.blob_id);
      if (seen === undefined || holdOrder.indexOf(h.hold) < holdOrder.indexOf(seen.hold))
        byBlob.set(l.blob_id, { hold: h.hold, bytes });
    }
  }
  const sum = (hold: Hold): number =>
    [...byBlob.values()].filter((b) => b.hold === hold).reduce((n, b) => n + b.bytes, 0);
  return {
    inUseBytes: sum('in-use'),
    pinnedBytes: sum('pinned'),
    busyBytes: sum('busy'),
    currentBytes: sum('current'),
    failedBytes: sum('failed'),
    evictableBytes: sum('evictable'),
    images,
  };
}
