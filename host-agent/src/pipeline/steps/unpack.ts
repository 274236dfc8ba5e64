/**
 * unpack: a fresh volume, its filesystem mounted nosuid,nodev, and the pinned
 * object streamed from S3 (parallel ranged GETs, handed over in order)
 * straight into the unpacker, hashed on the way.
 * The content is flushed before the step completes, so "unpacked" in the
 * store means "on stable storage".
 */
import { join } from 'node:path';
import { volumeSizeFor } from '../../config.js';
import { ImageError } from '../../errors.js';
import { failpoint } from '../../failpoints.js';
import { describeContainer, prepareUpload } from '../../image/index.js';
import { unpackArchive } from '../../unpack/index.js';
import type { JobContext, StepOutcome } from '../context.js';
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

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, job, image, ref, progress } = ctx;
  const linked = store.images.blobIds(image.id).map((id) => store.blobs.get(id));
  if (linked.length > 0 && linked.every((b) => b?.status === 'ready')) {
    return { status: 'skipped', detail: { reason: 'content already unpacked' } };
  }
  const done = store.objects
    .forJob(job.id)
    .find((o) => o.kind === 'volume' && (o.state === 'unpacked' || o.state === 'sealed'));
  if (done !== undefined) return { status: 'complete', detail: { volume: done.id, resumed: true } };

  const sizeBytes = volumeSizeFor(ref.size, ctx.config);
  const { volume, mountpoint } = await ctx.objects.createVolumeForUnpack(
    { sizeBytes, jobId: job.id },
    (vol) => {
      const blob = store.blobs.create(vol.id, hexOf(ref.checksumSha256));
      store.images.setBlobs(image.id, [blob.id]);
    },
  );
  const blob = store.blobs.byVolume(volume.id)!;
  ctx.logger.info('unpacking', { volume: volume.id, blob: blob.id, sizeBytes, mountpoint });

  progress.start('download', ref.size);
  progress.start('unpack', ref.size);
  const { downloadObject } = await import('../../source/download.js');
  const download = downloadObject(await ctx.s3(), ref, {
    partSize: ctx.config.download.partSizeBytes,
    concurrency: ctx.config.download.concurrency,
    onBytes: (n) => progress.update('download', n),
    signal: ctx.signal,
    logger: ctx.logger,
  });
  let stats;
  let upload;
  try {
    // Content decides: a flat tar streams through; a container image is spooled and verified first.
    upload = await prepareUpload(download.chunks, {
      spoolDir: join(ctx.config.stateDir, 'spool', `job-${job.id}`),
      limits: ctx.config.limits,
    });
    if (upload.container !== undefined) {
      const { layout, chosen, layers, whiteouts, spooledBytes } = upload.container;
      ctx.logger.info('container image verified', {
        layout,
        chosen,
        layers: layers.length,
        whiteouts,
        spooledBytes,
      });
    }
    stats = await unpackArchive(upload.source, {
      root: mountpoint,
      limits: ctx.config.limits,
      onProgress: (n: number) => {
        progress.update('unpack', n);
        if (n >= ref.size / 2) failpoint('unpack:midway');
      },
      signal: ctx.signal,
    });
  } catch (err) {
    // The unpacker stopped first; the download's own outcome is secondary.
    download.result.catch(() => undefined);
    throw asVolumeFull(err, sizeBytes);
  } finally {
    upload?.release();
    progress.end('download');
    progress.end('unpack');
  }
  const fetched = await download.result;
  await ctx.objects.markUnpacked(volume, () =>
    store.blobs.recordContent(blob.id, {
      sha256: fetched.sha256,
      size: fetched.size,
      compression: upload.compression,
      imageConfig: upload.container === undefined ? null : describeContainer(upload.container),
    }),
  );
  return {
    status: 'complete',
    detail: {
      volume: volume.id,
      blob: blob.id,
      sha256: fetched.sha256,
      resumes: fetched.resumes,
      ...stats,
      compression: upload.compression,
      ...(upload.container === undefined
        ? {}
        : { format: upload.container.layout, layers: upload.container.layers.length }),
    },
  };
}

export const unpackStep: Step = { name: 'unpack', jobStatus: 'unpacking', run };
