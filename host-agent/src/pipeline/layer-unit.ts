/**
 * An image's layers applied in order, each as a recorded unit: the pipeline
 * side of "where is a layer applied" (the filesystem side, tar to files and
 * whiteouts, is layer/apply-layer.ts). Layers the host holds are reused (the
 * highest one held is the start); every layer above is applied on a clone
 * of the one below.
 *
 * A layer's blob row and its volume's intent are committed together, before
 * the volume exists; the layer is applied, flushed, sealed, and made ready in
 * the seal's transaction. A crash mid-layer leaves an intent whose volume
 * reconcile discards (the layer is applied again); a crash after the seal
 * leaves a ready layer that is reused, never applied twice.
 *
 * Layers are shared by OCI chain ID: a ready layer is reused; a layer a live
 * job is building right now is waited for (the check and the intent are one
 * IMMEDIATE transaction, so two jobs never both build it); at most one ready
 * layer per chain ID is enforced by the store's unique index as well.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { tarBytesEstimate, volumeSizeFor } from '../config.js';
import { ImageError } from '../errors.js';
import type { OpenedImage } from '../image/index.js';
import { applyLayer } from '../layer/index.js';
import { checkChainBytes } from '../limits.js';
import type { BlobRow } from '../store/blobs.js';
import type { StorageObjectRow } from '../store/objects.js';
import { isOwnerAlive } from '../store/owner.js';
import type { StateStore } from '../store/index.js';
import { jittered } from '../retry.js';
import { failpoint } from '../failpoints.js';
import type { JobContext } from './context.js';

/** Another live job is building this layer: wait for it. */
class LayerBusy extends Error {}

export interface LayerPlan {
  /** 0-based position in the image (the image_blobs position). */
  index: number;
  chainId: string;
  diffId: string;
  /** The ready layer below, whose volume this one's is cloned from; null for the base. */
  parent: BlobRow | null;
  /**
   * The volume size this image needs: a base layer's volume is made this
   * size; a clone is grown to it when its parent's is smaller (never shrunk).
   */
  sizeBytes: number;
  /** What applying it may write (its tar, 4 × a compressed blob): the pool must have it above the reserve. */
  needBytes: number;
  /** Apply the layer onto the mounted filesystem; its counts go to the log and the step detail. */
  apply(mountpoint: string, lower: boolean): Promise<{ tarBytes: number; compression: string }>;
}

/** Someone alive (not this owner) holds this blob's volume while building it. */
function buildingElsewhere(store: StateStore, blob: BlobRow, owner: string): boolean {
  const volume = blob.volume_id === null ? undefined : store.objects.get(blob.volume_id);
  return (
    volume !== undefined &&
    volume.state !== 'removed' &&
    volume.owner !== null &&
    volume.owner !== owner &&
    isOwnerAlive(volume.owner)
  );
}

/**
 * Seal a layer's applied volume and make its blob ready, in one transaction
 * with the seal; when the same content became ready meanwhile (another job
 * built the layer, or a flat tar with the same bytes was unpacked) share
 * that and release this copy. Returns the ready blob the image uses.
 */
export async function finishLayer(ctx: JobContext, volume: StorageObjectRow): Promise<BlobRow> {
  const { store, objects } = ctx;
  const blob = store.blobs.byVolume(volume.id);
  if (blob === undefined)
    throw new ImageError('STORAGE_FAILED', `volume ${volume.id} holds no layer`);
  let shared: BlobRow | undefined;
  await objects.seal(volume, () => {
    const fresh = store.blobs.get(blob.id)!;
    const same =
      (fresh.chain_id === null ? undefined : store.blobs.readyByChain(fresh.chain_id)) ??
      (fresh.sha256 === null ? undefined : store.blobs.readyBySha256(fresh.sha256));
    if (same !== undefined && same.id !== fresh.id) {
      if (fresh.status !== 'removed') store.blobs.setStatus(fresh.id, 'removed');
      shared = same;
    } else if (fresh.status === 'unpacking') store.blobs.setStatus(fresh.id, 'ready');
    else if (fresh.status !== 'ready')
      throw new ImageError(
        'STORAGE_FAILED',
        `layer ${fresh.id} became ${fresh.status} while it was built`,
      );
  });
  if (shared === undefined) return store.blobs.get(blob.id)!;
  ctx.logger.info('identical layer already ready: sharing it', {
    blob: shared.id,
    chainId: shared.chain_id,
  });
  await objects.remove(store.objects.get(volume.id)!);
  return shared;
}

/** Reuse the ready layer, wait for a live job building it, or build it here. */
export async function obtainLayer(
  ctx: JobContext,
  plan: LayerPlan,
): Promise<{ blob: BlobRow; applied: boolean }> {
  const { store, image } = ctx;
  let waited = false;
  for (;;) {
    const ready = linkIfReady(store, image.id, plan.index, plan.chainId);
    if (ready !== undefined) {
      if (waited) ctx.logger.info('layer built by another job: using it', { blob: ready.id });
      return { blob: ready, applied: false };
    }
    try {
      return { blob: await buildLayer(ctx, plan), applied: true };
    } catch (err) {
      if (!(err instanceof LayerBusy)) throw err;
      if (!waited)
        ctx.logger.info('another job is building this layer: waiting for it', {
          layer: plan.index + 1,
          chainId: plan.chainId,
        });
      waited = true;
      await sleep(jittered(200), undefined, { signal: ctx.signal });
    }
  }
}

/**
 * The ready layer with this chain ID, linked to the image in the same
 * transaction, so gc (which releases only layers no image links) cannot
 * take it in between.
 */
export function linkIfReady(
  store: StateStore,
  imageId: number,
  index: number,
  chainId: string,
): BlobRow | undefined {
  return store.tx(() => {
    const ready = store.blobs.readyByChain(chainId);
    if (ready !== undefined) store.images.linkBlob(imageId, index, ready.id);
    return ready;
  });
}

async function buildLayer(ctx: JobContext, plan: LayerPlan): Promise<BlobRow> {
  const { store, objects, image, job } = ctx;
  const n = plan.index + 1;
  const onIntent = (volume: StorageObjectRow): void => {
    if (store.blobs.readyByChain(plan.chainId) !== undefined) throw new LayerBusy();
    if (
      store.blobs.buildingByChain(plan.chainId).some((b) => buildingElsewhere(store, b, ctx.owner))
    )
      throw new LayerBusy();
    const blob = store.blobs.create(volume.id, null, {
      chainId: plan.chainId,
      diffId: plan.diffId,
      parentBlobId: plan.parent?.id ?? null,
      depth: n,
    });
    store.images.linkBlob(image.id, plan.index, blob.id);
  };
  const parentVolume = plan.parent === null ? null : store.objects.get(plan.parent.volume_id ?? -1);
  if (plan.parent !== null && parentVolume === undefined)
    throw new ImageError('STORAGE_FAILED', `layer ${plan.parent.id} has no volume to clone`);
  const { volume, mountpoint } =
    parentVolume === null || parentVolume === undefined
      ? await objects.createVolumeForUnpack({ sizeBytes: plan.sizeBytes, jobId: job.id }, onIntent)
      : await objects.cloneVolumeForApply(
          { parent: parentVolume, jobId: job.id, sizeBytes: plan.sizeBytes },
          onIntent,
        );
  failpoint(`layer:${n}:mounted`);
  const blob = store.blobs.byVolume(volume.id)!;
  ctx.logger.info('applying layer', {
    layer: n,
    chainId: plan.chainId,
    volume: volume.id,
    blob: blob.id,
    clonedFrom: parentVolume?.id ?? null,
  });
  // Each layer is checked, not only the image at admission: a long chain stops at the reserve
  // (a failure releases the fresh volume with the job's other leftovers).
  await objects.backend.ensureSpace(plan.needBytes);
  const applied = await plan.apply(mountpoint, plan.parent !== null);
  await objects.markUnpacked(volume, () =>
    store.blobs.recordLayer(blob.id, {
      diffId: null,
      chainId: null,
      size: applied.tarBytes,
      compression: applied.compression,
    }),
  );
  failpoint(`layer:${n}:flushed`);
  const ready = await finishLayer(ctx, store.objects.get(volume.id)!);
  store.tx(() => store.images.linkBlob(image.id, plan.index, ready.id));
  failpoint(`layer:${n}:ready`);
  return ready;
}

/**
 * The volume size a container image needs, from what is known before any
 * layer is read: the object's size, and its layers' stored sizes (more than
 * the object's when the archive is compressed as a whole). A clone whose
 * parent layer was made smaller (for a smaller image) is grown to this.
 */
function imageVolumeSize(ctx: JobContext, source: OpenedImage, objectVolumeBytes: number): number {
  const layerBytes = source.layers.reduce((n, l) => n + l.blobBytes, 0);
  return Math.max(objectVolumeBytes, volumeSizeFor(layerBytes, ctx.config));
}

/**
 * What a container image read by range will write: the layers above the
 * highest one the host holds (held layers cost nothing), each as unpacked —
 * its stored size, four times that when compressed — and never more than
 * the volume it asks for.
 */
export function bytesToApply(
  ctx: JobContext,
  source: OpenedImage,
  objectVolumeBytes: number,
): { bytes: number; layers: number } {
  const missing = source.layers.slice(highestHeldLayer(ctx, source.layers) + 1);
  const bytes = missing.reduce((n, l) => n + layerBytesEstimate(l), 0);
  return {
    bytes: Math.min(bytes, imageVolumeSize(ctx, source, objectVolumeBytes)),
    layers: missing.length,
  };
}

/** What a layer unpacks to at most (tarBytesEstimate). */
function layerBytesEstimate(l: OpenedImage['layers'][number]): number {
  return tarBytesEstimate(l.blobBytes, { uncompressedTar: l.compression === 'none' });
}

/** The index of the highest layer the host holds ready by chain ID; -1 for none. */
function highestHeldLayer(ctx: Pick<JobContext, 'store'>, layers: OpenedImage['layers']): number {
  let highest = -1;
  for (const [i, l] of layers.entries())
    if (ctx.store.blobs.readyByChain(l.chainId!) !== undefined) highest = i;
  return highest;
}

/**
 * A container image: layers the host holds are reused (the highest one held
 * is the start: nothing below it is needed), every layer above is applied on
 * a clone of the one below.
 */
export async function applyLayers(
  ctx: JobContext,
  source: OpenedImage,
  objectVolumeBytes: number,
): Promise<Record<string, unknown>> {
  const { store, image, progress } = ctx;
  const layers = source.layers;
  const sizeBytes = imageVolumeSize(ctx, source, objectVolumeBytes);
  ctx.logger.info('container image verified', {
    format: source.format,
    chosen: source.chosen,
    layers: layers.length,
    spooledBytes: source.spooledBytes(),
    volumeSizeBytes: sizeBytes,
  });
  // One transaction: the held layers are relinked as the old links go, so a pool pass in
  // another process never sees them unlinked (it would release them as unused).
  const start = store.tx(() => {
    store.images.setBlobs(image.id, []);
    const highest = highestHeldLayer(ctx, layers);
    for (const [i, l] of layers.entries())
      if (i <= highest) linkIfReady(store, image.id, i, l.chainId!);
    return highest;
  });
  let parent: BlobRow | null = null;
  let applied = 0;
  let chainBytes = 0;
  const totals = { entries: 0, bytes: 0, whiteouts: 0, removed: 0 };
  for (const [i, layer] of layers.entries()) {
    if (i < start) continue;
    const outcome = await obtainLayer(ctx, {
      index: i,
      chainId: layer.chainId!,
      diffId: layer.diffId!,
      parent,
      sizeBytes,
      needBytes: layerBytesEstimate(layer),
      apply: async (mountpoint, lower) => {
        progress.start('unpack', null);
        try {
          const stats = await applyLayer(layer.open(ctx.signal), {
            root: mountpoint,
            lower,
            limits: ctx.config.limits,
            signal: ctx.signal,
            onProgress: (n) => {
              progress.update('unpack', n);
              failpoint(`layer:${i + 1}:midway`);
            },
          });
          const found = layer.digests();
          if (found === null || found.diffId !== layer.diffId)
            throw new ImageError(
              'LAYER_DIGEST_MISMATCH',
              `layer ${i + 1}: its content hashes to ${found?.diffId ?? 'nothing'}, not ${layer.diffId}`,
            );
          // A compressed layer's size is known once read: the chain limit holds during the apply too.
          checkChainBytes((chainBytes += found.tarBytes), ctx.config.limits);
          for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += stats[k];
          ctx.logger.info('layer applied', { layer: i + 1, chainId: layer.chainId, ...stats });
          return { tarBytes: found.tarBytes, compression: layer.compression };
        } finally {
          progress.end('unpack');
        }
      },
    });
    if (outcome.applied) applied++;
    parent = outcome.blob;
  }
  return {
    blob: parent?.id ?? null,
    volumeSizeBytes: sizeBytes,
    layers: layers.length,
    layersApplied: applied,
    layersReused: layers.length - applied,
    layersHeldBelow: Math.max(0, start),
    ...totals,
  };
}
