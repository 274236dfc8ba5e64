/**
 * unpack: the image's layers onto a chain of volumes, one recorded unit per
 * layer (pipeline/layer-unit.ts). The pinned object is streamed from S3
 * (parallel ranged GETs, handed over in order) into image/image-source.ts:
 * a flat tar is one layer, unpacked on a fresh volume by today's unpacker as
 * it streams; a container archive is spooled and verified whole, then each
 * layer the host does not hold yet is applied on a clone of the layer below
 * (held layers are reused, never applied again). Every layer is flushed and
 * sealed before it counts, so "ready" in the store means "on stable storage".
 */
import { unpackedEstimate, volumeSizeFor } from '../../config.js';
import { ImageError } from '../../errors.js';
import { failpoint } from '../../failpoints.js';
import {
  describeImage,
  flatChainId,
  looksLikeImageLayout,
  openImage,
  type OpenedImage,
  type SourcedImage,
} from '../../image/index.js';
import { admit } from '../../pool/keeper.js';
import { spoolDirOf } from '../../image/spool.js';
import { unpackArchive } from '../../layer/index.js';
import type { JobContext, StepOutcome } from '../context.js';
import { applyLayers, bytesToApply, finishLayer } from '../layer-unit.js';
import { trustGate } from '../../trust/gate.js';
import { sealLeftovers } from './seal.js';
import type { Step } from './index.js';

function hexOf(b64: string | null): string | null {
  return b64 === null ? null : Buffer.from(b64, 'base64').toString('hex');
}

/** A full volume or host filesystem shows up as ENOSPC from a write. */
function asVolumeFull(err: unknown, sizeBytes: number): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ImageError(
      'VOLUME_FULL',
      `the image does not fit its ${sizeBytes}-byte volume (out of space or inodes)`,
      'set THINRELAY_VOLUME_SIZE larger, or check the host has free space',
      { cause: err },
    );
  }
  return err;
}

/**
 * The image's content is complete: its top layer ready, and the end of the
 * unpack recorded (the object's sha256 once it was read whole, the image's
 * config once a container image read by range was applied).
 */
function contentComplete(ctx: JobContext): boolean {
  const { store, image } = ctx;
  const top = store.images.topBlobId(image.id);
  const ended =
    store.images.get(image.id)!.sha256 !== null || store.images.configJson(image.id) !== null;
  return ended && top !== undefined && store.blobs.get(top)?.status === 'ready';
}

/**
 * An archive uncompressed at the outer level is read where it lies, by
 * ranged GETs: its structure first, then only the layers the host does not
 * hold. Null for anything else (streamed or spooled instead).
 */
async function openRanged(
  ctx: JobContext,
  onFirstBlock: (startsWithTar: boolean) => void,
): Promise<OpenedImage | null> {
  const { openRemoteArchive } = await import('../../image/remote-archive.js');
  return openRemoteArchive(await ctx.s3(), ctx.ref, {
    onFirstBlock,
    limits: ctx.config.limits,
    partSize: ctx.config.download.partSizeBytes,
    concurrency: ctx.config.download.concurrency,
    signal: ctx.signal,
    logger: ctx.logger,
  });
}

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image, ref, progress } = ctx;
  if (contentComplete(ctx)) {
    // Done by this job before a crash, or by another (resolve found the same bytes).
    const top = store.blobs.get(store.images.topBlobId(image.id)!)!;
    const mine = top.volume_id !== null && store.objects.get(top.volume_id)?.job_id === job.id;
    return mine
      ? { status: 'complete', detail: { blob: top.id, resumed: true, layersApplied: 0 } }
      : { status: 'skipped', detail: { reason: 'content already unpacked' } };
  }
  // Layers applied and flushed before a crash, not yet ready: the work is on stable storage.
  // A flat tar's layer finished this way completes the image without reading it again.
  const resumed = (await sealLeftovers(ctx)).flat;
  if (resumed !== null)
    return { status: 'complete', detail: { blob: resumed.id, resumed: true, layersApplied: 0 } };

  const sizeBytes = volumeSizeFor(ref.size, ctx.config);
  let uncompressedTar = false;
  const ranged = await openRanged(ctx, (tar) => (uncompressedTar = tar));
  if (ranged !== null) {
    let detail: Record<string, unknown>;
    try {
      // Before the first layer byte: an OCI archive's manifest digest (a legacy docker save: its bytes).
      await trustGate(ctx, { manifestDigest: ranged.manifestDigest, objectSha256: null });
      const need = bytesToApply(ctx, ranged, sizeBytes);
      await admit(ctx, need.bytes, `${ref.key} (${need.layers} layer(s) not held here)`);
      detail = await applyLayers(ctx, ranged, sizeBytes);
    } catch (err) {
      throw asVolumeFull(err, sizeBytes);
    } finally {
      ranged.release();
    }
    store.tx(() => store.images.setConfig(image.id, describeImage(ranged)));
    return {
      status: 'complete',
      detail: {
        ...detail,
        bytesFetched: ranged.bytesFetched(),
        compression: ranged.compression,
        format: ranged.format,
        reader: 'ranged',
      },
    };
  }
  // Streamed or spooled: what it holds is known only once read, so it needs room for all of it.
  await admit(ctx, unpackedEstimate(ref.size, ctx.config, { uncompressedTar }), ref.key);
  progress.start('download', ref.size);
  // A large object is fetched and hashed on a worker thread: this one parses tar and writes files.
  const { downloadInWorker, DEFAULT_THREAD_MIN_BYTES } =
    await import('../../source/worker-download.js');
  let fetchedBytes = 0;
  // Aborted when the unpack fails, wherever it stopped reading (before its first byte
  // too): the download, and its worker thread, end with it instead of waiting on us.
  const stop = new AbortController();
  const download = downloadInWorker(await ctx.s3(), ref, {
    partSize: ctx.config.download.partSizeBytes,
    concurrency: ctx.config.download.concurrency,
    threadMinBytes: DEFAULT_THREAD_MIN_BYTES,
    onBytes: (n) => {
      fetchedBytes = n;
      progress.update('download', n);
    },
    signal: AbortSignal.any([ctx.signal, stop.signal]),
    logger: ctx.logger,
  });
  let source: SourcedImage | undefined;
  let detail: Record<string, unknown>;
  try {
    // Content decides: a flat tar streams through; a container image is spooled and verified first.
    source = await openImage(download.chunks, {
      spoolDir: spoolDirOf(ctx.config.stateDir, job.id),
      limits: ctx.config.limits,
      reserveBytes: ctx.config.reserveBytes,
      bytesFetched: () => fetchedBytes,
    });
    if (source.flatBytes === null)
      // Spooled and verified whole, no layer applied yet: the manifest digest (or the bytes) first.
      await trustGate(ctx, { manifestDigest: source.manifestDigest, objectSha256: null });
    detail =
      source.flatBytes === null
        ? await applyLayers(ctx, source, sizeBytes)
        : await unpackFlat(ctx, source, sizeBytes, download.result);
  } catch (err) {
    // The unpacker stopped first; the download's own outcome is secondary.
    download.result.catch(() => undefined);
    stop.abort(err);
    throw asVolumeFull(err, sizeBytes);
  } finally {
    source?.release();
    progress.end('download');
  }
  const fetched = await download.result;
  store.tx(() => {
    store.images.setConfig(image.id, describeImage(source));
    store.images.recordDigest(image.id, fetched.sha256);
  });
  return {
    status: 'complete',
    detail: {
      ...detail,
      sha256: fetched.sha256,
      resumes: fetched.resumes,
      bytesFetched: fetched.size,
      compression: source.compression,
      format: source.format,
    },
  };
}

/** A flat tar: one layer on a fresh volume, unpacked as it streams by today's unpacker. */
async function unpackFlat(
  ctx: JobContext,
  source: SourcedImage,
  sizeBytes: number,
  result: Promise<{ sha256: string; size: number }>,
): Promise<Record<string, unknown>> {
  const { store, job, image, ref, progress } = ctx;
  const { volume, mountpoint } = await ctx.objects.createVolumeForUnpack(
    { sizeBytes, jobId: job.id },
    (vol) => {
      const blob = store.blobs.create(vol.id, hexOf(ref.checksumSha256));
      store.images.setBlobs(image.id, [blob.id]);
    },
  );
  const blob = store.blobs.byVolume(volume.id)!;
  ctx.logger.info('unpacking', { volume: volume.id, blob: blob.id, sizeBytes, mountpoint });
  progress.start('unpack', ref.size);
  let stats;
  try {
    stats = await unpackArchive(source.flatBytes!(), {
      root: mountpoint,
      limits: ctx.config.limits,
      onProgress: (n: number) => {
        progress.update('unpack', n);
        if (n >= ref.size / 2) failpoint('unpack:midway');
      },
      signal: ctx.signal,
    });
  } finally {
    progress.end('unpack');
  }
  if (looksLikeImageLayout(mountpoint))
    throw new ImageError(
      'IMAGE_FORMAT_UNKNOWN',
      'the archive holds a container image layout (oci-layout, index.json and blobs/, or manifest.json and its blobs) but its first members are not image metadata, so it was not read as an image',
      'tar the layout with its metadata or blobs first (as skopeo does, or `tar -C DIR -cf IMAGE.tar .`), or upload a root filesystem',
    );
  const fetched = await result;
  // An uncompressed tar's sha256 is its diff_id; its sharing key says it was unpacked flat
  // (no whiteouts), so a layer with the same bytes never shares its volume.
  const id = source.compression === 'none' ? `sha256:${fetched.sha256}` : null;
  // Flushed with its content's sha256 before the signature is checked: a failed check
  // keeps this volume for a re-sign (pipeline/failure.ts), which seals it without a download.
  await ctx.objects.markUnpacked(volume, () => {
    store.blobs.recordContent(blob.id, {
      sha256: fetched.sha256,
      size: fetched.size,
      compression: source.compression,
    });
    store.blobs.recordLayer(blob.id, {
      diffId: id,
      chainId: id === null ? null : flatChainId(id),
      size: fetched.size,
      compression: source.compression,
    });
  });
  failpoint('layer:1:flushed');
  // Unpacked while it streamed, but not sealed or shared until its signature checks.
  await trustGate(ctx, { manifestDigest: null, objectSha256: fetched.sha256 });
  const ready = await finishLayer(ctx, store.objects.get(volume.id)!);
  store.tx(() => store.images.setBlobs(image.id, [ready.id]));
  return {
    volume: volume.id,
    blob: ready.id,
    sharedWithBlob: ready.id === blob.id ? null : ready.id,
    layers: 1,
    layersApplied: 1,
    layersReused: 0,
    ...stats,
  };
}

export const unpackStep: Step = { name: 'unpack', jobStatus: 'unpacking', run };
