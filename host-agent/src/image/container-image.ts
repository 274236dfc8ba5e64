/**
 * A spooled container image archive (OCI layout or `docker save`), read and
 * checked whole before any layer is applied: index, read the manifest,
 * verify every blob and layer digest, and index every layer's tar (a layer
 * that is not a tar, and the image's member count, are refused before the
 * pool is touched). Then each layer's plain tar is read from the spool on
 * its own and applied on top of the layers below it by layer/apply-layer.ts,
 * which holds the one whiteout model: hostile whiteouts and cross-layer
 * symlink escapes are refused there, as for an archive read by range.
 */
import { Readable } from 'node:stream';
import { ImageError, isThinrelayError } from '../errors.js';
import { checkChainBytes, checkLayerCount, type ImageLimits } from '../limits.js';
import { compressionOf, decompress, type ImageCompression } from '../layer/compression.js';
import { parseImageConfig, type RunConfig } from './image-config.js';
import {
  ArchiveMembers,
  checkJsonMember,
  checkLayerMediaType,
  parseJsonBytes,
  readImagePlan,
  type BlobRef,
  type ImageLayout,
} from './manifest.js';
import type { SpoolDir } from './spool.js';
import { indexTar, readRange, type IndexedMember } from '../layer/tar-index.js';
import {
  hashRange,
  refuseRepeatedBlobs,
  verifyBlob,
  verifyBlobBytes,
  verifyDiffId,
} from './verify.js';

export interface ContainerImage {
  layout: ImageLayout;
  chosen: string;
  manifestDigest: string | null;
  config: RunConfig;
  /** diffId: hex sha256 of the uncompressed layer (verified against the config). */
  layers: { diffId: string; compression: ImageCompression; size: number }[];
  spooledBytes: number;
  /** Layer n's plain tar (0-based), read from the spool. */
  layerTar(index: number): AsyncIterable<Buffer>;
}

function jsonReader(fd: number) {
  return (member: IndexedMember, what: string, blob?: BlobRef): unknown => {
    checkJsonMember(member, what);
    const bytes = readRange(fd, member.dataOffset, member.size);
    if (blob !== undefined) verifyBlobBytes(bytes, blob, what);
    return parseJsonBytes(bytes, what);
  };
}

function* rangeOf(fd: number, offset: number, length: number): Generator<Buffer> {
  const CHUNK = 1024 * 1024;
  for (let done = 0; done < length;) {
    const buf = readRange(fd, offset + done, Math.min(CHUNK, length - done));
    if (buf.length === 0) return;
    yield buf;
    done += buf.length;
  }
}

/** A layer's plain tar: its member range when uncompressed, else a spooled decompression. */
async function layerTar(
  spool: SpoolDir,
  fd: number,
  blob: BlobRef,
  n: number,
): Promise<{
  input: { fd: number; offset: number; length: number };
  sha256: string;
  compression: ImageCompression;
}> {
  checkLayerMediaType(blob, n);
  const { member } = blob;
  const compression = compressionOf(readRange(fd, member.dataOffset, Math.min(8, member.size)));
  if (compression === 'none') {
    // A verified blob digest of an uncompressed layer is its diff_id already.
    const sha256 = blob.sha256 ?? hashRange(fd, member.dataOffset, member.size);
    return { input: { fd, offset: member.dataOffset, length: member.size }, sha256, compression };
  }
  if (compression === 'xz')
    throw new ImageError(
      'LAYER_NOT_TAR',
      `layer ${n} is xz-compressed, which no layer media type allows`,
    );
  try {
    const out = await spool.write(
      `layer-${n}.tar`,
      decompress(rangeOf(fd, member.dataOffset, member.size), compression, `layer ${n}`),
    );
    return { input: { fd: out.fd, offset: 0, length: out.size }, sha256: out.sha256, compression };
  } catch (err) {
    if (isThinrelayError(err) && err.code === 'ARCHIVE_MALFORMED')
      throw new ImageError('LAYER_NOT_TAR', `layer ${n}: ${err.message}`, undefined, {
        cause: err,
      });
    throw err;
  }
}

/** Reads, verifies and flattens the spooled archive at `fd`. */
export async function openContainerImage(
  spool: SpoolDir,
  archive: { fd: number; size: number },
  limits: Pick<ImageLimits, 'maxEntries' | 'maxLayers' | 'maxChainBytes'>,
): Promise<ContainerImage> {
  const { fd } = archive;
  const members = new ArchiveMembers(
    indexTar({ fd, offset: 0, length: archive.size }, 'the archive', limits.maxEntries),
  );
  const read = jsonReader(fd);
  const plan = readImagePlan(members, read);
  verifyBlob(fd, plan.config, 'the image config');
  const config = parseImageConfig(read(plan.config.member, 'the image config'));
  if (config.diffIds.length !== plan.layers.length) {
    throw new ImageError(
      'IMAGE_MANIFEST_INVALID',
      `the manifest names ${plan.layers.length} layers but the config's rootfs.diff_ids has ${config.diffIds.length}`,
    );
  }
  refuseRepeatedBlobs(plan.layers);
  checkLayerCount(plan.layers.length, limits);
  checkChainBytes(
    plan.layers.reduce((n, b) => n + b.member.size, 0),
    limits,
  );
  const layers: ContainerImage['layers'] = [];
  const ranges: { fd: number; offset: number; length: number }[] = [];
  let entries = 0;
  let chainBytes = 0;
  for (const [i, blob] of plan.layers.entries()) {
    const n = i + 1;
    verifyBlob(fd, blob, `layer ${n}`);
    const layer = await layerTar(spool, fd, blob, n);
    checkChainBytes((chainBytes += layer.input.length), limits);
    verifyDiffId(layer.sha256, config.diffIds[i]!, n);
    const indexed = indexTar(
      { ...layer.input },
      `layer ${n}`,
      limits.maxEntries - entries,
      'LAYER_NOT_TAR',
    );
    entries += indexed.length;
    layers.push({ diffId: layer.sha256, compression: layer.compression, size: blob.member.size });
    ranges.push(layer.input);
  }
  return {
    layout: plan.layout,
    chosen: plan.chosen,
    manifestDigest: plan.manifestDigest,
    config: config.run,
    layers,
    spooledBytes: archive.size,
    // A stream, so reads of the spool interleave with the layer's writes.
    layerTar: (i) => {
      const r = ranges[i]!;
      return Readable.from(rangeOf(r.fd, r.offset, r.length), {
        objectMode: true,
      }) as AsyncIterable<Buffer>;
    },
  };
}
