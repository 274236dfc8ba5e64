/**
 * Operator actions on images and snapshots (CLI now, daemon later): activate
 * a new snapshot, deactivate one, remove an image. All storage changes go
 * through the ObjectManager, so each is recorded before it happens.
 */
import { refuseUntrusted } from '../trust/untrusted.js';
import { NotFoundError, UsageError } from '../errors.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { ImageRow } from '../store/images.js';
import type { StorageObjectRow } from '../store/objects.js';
import { releaseImage } from '../pool/release.js';
import { isOwnerAlive } from '../store/owner.js';
import { reclaimSpools } from './spools.js';

/** IMAGE is an image id or an S3 key (newest image with that key). */
export function findImage(
  deps: Pick<PipelineDeps, 'store'>,
  ref: string,
  opts: { includeRemoved?: boolean } = {},
): ImageRow {
  const image = /^\d+$/.test(ref)
    ? deps.store.images.get(Number(ref))
    : deps.store.images.latestByKey(ref);
  if (image === undefined || (image.status === 'removed' && opts.includeRemoved !== true)) {
    throw new NotFoundError(
      'NOT_FOUND',
      `no image "${ref}" on this host`,
      'see `thinrelay images`',
    );
  }
  return image;
}

/**
 * A container image's recorded format, layers and run config (Entrypoint,
 * Cmd, Env, ...), as the unpack step stored it with the image; null for a
 * flat rootfs tar or content not unpacked yet.
 */
export function containerConfigOf(deps: Pick<PipelineDeps, 'store'>, image: ImageRow): unknown {
  const own = deps.store.images.configJson(image.id);
  if (own !== null) return JSON.parse(own) as unknown;
  // Written by a version before layers: kept with the content.
  for (const id of deps.store.images.blobIds(image.id)) {
    const json = deps.store.blobs.get(id)?.image_config;
    if (json !== undefined && json !== null) return JSON.parse(json) as unknown;
  }
  return null;
}

/** SNAPSHOT is a snapshot object id, its name (snap-00000012) or its device path. */
export function findSnapshot(deps: Pick<PipelineDeps, 'store'>, ref: string): StorageObjectRow {
  const { store } = deps;
  const byDevice = store.snapshots.list().find((s) => s.device_path === ref);
  const m = /^(?:snap-)?(\d+)$/.exec(ref);
  const id = byDevice?.object_id ?? (m === null ? undefined : Number(m[1]));
  const row = id === undefined ? undefined : store.objects.get(id);
  if (row === undefined || row.kind !== 'snapshot' || row.state === 'removed') {
    throw new NotFoundError(
      'NOT_FOUND',
      `no snapshot "${ref}" on this host`,
      'see `thinrelay snapshots`',
    );
  }
  return row;
}

/** A new writable snapshot of a ready image, activated. */
export async function activateImage(
  deps: PipelineDeps,
  ref: string,
): Promise<{ snapshot: StorageObjectRow; devicePath: string }> {
  const image = findImage(deps, ref);
  refuseUntrusted(image);
  if (image.status !== 'ready') {
    throw new UsageError(
      'NOT_READY',
      `image ${image.id} (${image.key}) is ${image.status}, not ready`,
      'run `thinrelay process-image` for it first',
    );
  }
  const blob = deps.store.blobs.get(deps.store.images.topBlobId(image.id)!)!;
  const volume = deps.store.objects.get(blob.volume_id!)!;
  const snap = await deps.objects.createSnapshot({ volume, imageId: image.id, jobId: null });
  const devicePath = await deps.objects.activate(snap);
  return { snapshot: deps.store.objects.get(snap.id)!, devicePath };
}

export async function deactivateSnapshot(
  deps: PipelineDeps,
  ref: string,
): Promise<StorageObjectRow> {
  const snap = findSnapshot(deps, ref);
  if (snap.state !== 'active')
    throw new UsageError('NOT_READY', `snapshot ${snap.id} is ${snap.state}, not active`);
  await deps.objects.deactivate(snap);
  return deps.store.objects.get(snap.id)!;
}

/**
 * Remove an image: its snapshots (refused while any is active, unless
 * force), then each of its layers that no other image uses (a layer another
 * image shares stays, with its volume).
 */
export async function removeImage(
  deps: PipelineDeps,
  ref: string,
  opts: { force: boolean },
): Promise<{ image: ImageRow; removedObjects: number }> {
  const { store } = deps;
  // A removed image too: removing it again finishes a removal a crash cut short.
  const image = findImage(deps, ref, { includeRemoved: true });
  const job = store.jobs.openForImage(image.id);
  // A job whose process died (kill -9) is interrupted, not being processed: removable.
  if (job !== undefined && isOwnerAlive(job.owner)) {
    throw new UsageError(
      'IN_USE',
      `image ${image.id} (${image.key}) is being processed right now`,
      'wait for it to finish',
    );
  }
  const snaps = store.objects.snapshotsOfImage(image.id);
  const active = snaps.filter((s) => s.state === 'active');
  if (active.length > 0 && !opts.force) {
    throw new UsageError(
      'IN_USE',
      `image ${image.id} (${image.key}) has ${active.length} active snapshot(s)`,
      'deactivate them first, or use --force',
    );
  }
  const result = await releaseImage(deps, image.id, {
    reason: 'removed',
    snapshots: 'remove-all',
  });
  if (!result.released)
    throw new UsageError('IN_USE', `image ${image.id} (${image.key}): ${result.why}`, 'try again');
  // The interrupted job's spool (a whole archive, maybe GBs) goes with it.
  if (job !== undefined) reclaimSpools(deps, { jobId: job.id });
  return { image: store.images.get(image.id)!, removedObjects: result.removedObjects };
}
