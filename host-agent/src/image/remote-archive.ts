/**
 * An uncompressed container archive (OCI layout or `docker save`) read where
 * it lies in S3, without downloading it: ranged GETs of the member headers
 * (a window at each header, so small members next to it, such as the image
 * JSON, come with it), the manifest and config from those windows or by
 * range, then each layer's blob only when the pipeline opens it (a small
 * one that came with a header window is not fetched again). Layers the host
 * already holds are never fetched. An object compressed as a whole, or
 * a flat rootfs tar, is not for this reader: null, and the caller streams or
 * spools it as before.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { ImageError, isThinrelayError } from '../errors.js';
import { checkChainBytes, checkLayerCount, type ImageLimits } from '../limits.js';
import type { Logger } from '../log.js';
import { downloadObject } from '../source/download.js';
import type { ObjectRef } from '../source/object-ref.js';
import { compressionOf, decompress, type ImageCompression } from '../layer/compression.js';
import { parseImageConfig } from './image-config.js';
import {
  chainIdsOf,
  type LayerDigests,
  type LayerSource,
  type OpenedImage,
} from './layer-source.js';
import {
  ArchiveMembers,
  checkJsonMember,
  checkLayerMediaType,
  parseJsonBytes,
  readImagePlanAsync,
  type BlobRef,
} from './manifest.js';
import { isContainerArchive } from './sniff.js';
import { walkTar, type IndexedMember } from '../layer/tar-index.js';
import {
  checkBlobDigest,
  checkBlobSize,
  refuseRepeatedBlobs,
  verifyBlobBytes,
  verifyDiffId,
} from './verify.js';

export interface RemoteArchiveOptions {
  limits: ImageLimits;
  /** Ranged GET size and GETs in flight for a layer blob (the downloader's). */
  partSize: number;
  concurrency: number;
  signal: AbortSignal;
  logger: Logger;
  /**
   * GETs the header walk may spend (default MAX_WALK_REQUESTS). An archive
   * needing more (thousands of large members: no real image) is left to the
   * caller's streamed path, which reads it once whole: null.
   */
  maxWalkRequests?: number;
  /**
   * Told whether the object starts with a tar header (an archive uncompressed
   * at the outer level), before anything else is read: a caller that gets
   * null back still knows how large its streamed content will unpack.
   */
  onFirstBlock?: (startsWithTar: boolean) => void;
}

/** Bytes fetched at each header that is not already in hand. */
export const HEADER_WINDOW_BYTES = 64 * 1024;
/** Members up to this size that lie whole in a window are kept (the image JSON among them)… */
const KEEP_MEMBER_BYTES = 64 * 1024;
/** …up to this much in all; beyond, a member is fetched again by range when it is read. */
const KEEP_TOTAL_BYTES = 8 * 1024 * 1024;
/** First bytes of larger members kept (a layer's compression is told by them), for this many. */
const KEEP_HEADS = 4096;
const HEAD_BYTES = 8;
/** Member names looked at to tell a container archive from a flat tar (as sniff.ts does). */
const SNIFF_MEMBERS = 4;
/** A header per layer and a few for metadata; Docker allows 127 layers. */
export const MAX_WALK_REQUESTS = 1024;

/** What reading the archive's structure cost, for logs and benchmarks. */
export interface HeaderWalkStats {
  members: number;
  /** GETs for headers and metadata (layer blobs not included). */
  requests: number;
  /** Bytes of those GETs. */
  bytes: number;
}

/**
 * The archive's bytes by range: a window of HEADER_WINDOW_BYTES held at a
 * time, small members kept from the windows that held them, every GET
 * pinned to the object's ETag/VersionId by the downloader.
 */
class RangedArchive {
  requests = 0;
  bytes = 0;
  private window: { offset: number; data: Buffer } | null = null;
  private readonly kept = new Map<number, Buffer>();
  private keptBytes = 0;
  private readonly heads = new Map<number, Buffer>();

  constructor(
    private readonly s3: S3Client,
    readonly ref: ObjectRef,
    private readonly opts: RemoteArchiveOptions,
  ) {}

  /** Bytes [offset, offset + length) of the object (fewer only past its end), in one GET. */
  async fetch(offset: number, length: number): Promise<Buffer> {
    const end = Math.min(offset + length, this.ref.size) - 1;
    if (end < offset) return Buffer.alloc(0);
    this.requests += 1;
    const download = downloadObject(this.s3, this.ref, {
      window: { start: offset, end },
      concurrency: 1,
      signal: this.opts.signal,
      logger: this.opts.logger,
    });
    const chunks: Buffer[] = [];
    for await (const chunk of download.chunks) {
      chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.bytes += chunk.byteLength;
    }
    await download.result;
    return Buffer.concat(chunks);
  }

  /** Bytes for the tar walker: from the window in hand, else a new window from `offset`. */
  async read(offset: number, length: number): Promise<Buffer> {
    const w = this.window;
    if (w !== null && offset >= w.offset && offset + length <= w.offset + w.data.length)
      return w.data.subarray(offset - w.offset, offset - w.offset + length);
    const data = await this.fetch(offset, Math.max(length, HEADER_WINDOW_BYTES));
    this.window = { offset, data };
    return data.subarray(0, length);
  }

  /** Called for each member as the walk finds it: keep what the window holds of it. */
  noteMember(m: IndexedMember): void {
    const w = this.window;
    if (w === null || m.type !== 'file' || m.dataOffset < w.offset) return;
    const at = m.dataOffset - w.offset;
    if (
      m.size <= KEEP_MEMBER_BYTES &&
      at + m.size <= w.data.length &&
      this.keptBytes + m.size <= KEEP_TOTAL_BYTES
    ) {
      // A copy: the window itself is let go.
      this.kept.set(m.dataOffset, Buffer.from(w.data.subarray(at, at + m.size)));
      this.keptBytes += m.size;
    } else if (at + HEAD_BYTES <= w.data.length && this.heads.size < KEEP_HEADS) {
      this.heads.set(m.dataOffset, Buffer.from(w.data.subarray(at, at + HEAD_BYTES)));
    }
  }

  /** A member's whole data if a window held it, else undefined. */
  keptData(m: IndexedMember): Buffer | undefined {
    return this.kept.get(m.dataOffset);
  }

  /** A member's whole data (image JSON): kept, or fetched by range. */
  async dataOf(m: IndexedMember): Promise<Buffer> {
    return this.kept.get(m.dataOffset) ?? (await this.fetch(m.dataOffset, m.size));
  }

  /** A member's first bytes (a layer's compression magic). */
  async headOf(m: IndexedMember): Promise<Buffer> {
    const n = Math.min(HEAD_BYTES, m.size);
    const known = this.kept.get(m.dataOffset) ?? this.heads.get(m.dataOffset);
    return known !== undefined ? known.subarray(0, n) : await this.fetch(m.dataOffset, n);
  }

  /** The walk is over: only kept members are needed from here. */
  dropWindow(): void {
    this.window = null;
  }
}

/**
 * Walks the archive's headers. Returns null as soon as its first members
 * show a flat rootfs tar (or the object is no tar at all: the caller's
 * unpacker refuses it with its own message); throws the tar walker's
 * reason codes for a container archive that is malformed.
 */
async function walkMembers(
  archive: RangedArchive,
  limits: ImageLimits,
  maxRequests: number,
): Promise<IndexedMember[] | null | 'too-many-requests'> {
  const size = archive.ref.size;
  const members: IndexedMember[] = [];
  const names: string[] = [];
  let decided = false;
  const decide = (): boolean => {
    decided = true;
    return isContainerArchive(names);
  };
  const walk = walkTar({ offset: 0, length: size }, 'the archive', limits.maxEntries);
  try {
    for (let step = walk.next(); step.done !== true;) {
      if ('member' in step.value) {
        const m = step.value.member;
        members.push(m);
        archive.noteMember(m);
        if (!decided) names.push(m.name);
        if (!decided && names.length >= SNIFF_MEMBERS && !decide()) return null;
        step = walk.next();
        continue;
      }
      const { offset, length } = step.value.read;
      // Past the first window: the members seen so far decide, as sniff.ts's peek would.
      if (!decided && offset + length > HEADER_WINDOW_BYTES && !decide()) return null;
      const bytes = await archive.read(offset, length);
      if (archive.requests > maxRequests) return 'too-many-requests';
      step = walk.next(bytes);
    }
  } catch (err) {
    if (!decided && !decide()) return null;
    throw err;
  }
  if (!decided && !decide()) return null;
  return members;
}

/** Is the object's start an uncompressed ustar header? Anything else is not ours to read. */
function startsWithTarHeader(head: Buffer): boolean {
  return (
    head.length >= 512 &&
    compressionOf(head) === 'none' &&
    head.subarray(257, 262).toString('latin1') === 'ustar'
  );
}

/**
 * Opens an uncompressed container archive in S3 by ranged GETs: reads its
 * structure, the manifest and config (the config's digest verified), and
 * returns its layers, none of them fetched yet. Null when the object is not
 * an uncompressed container archive: the caller uses openImage().
 */
export async function openRemoteArchive(
  s3: S3Client,
  ref: ObjectRef,
  opts: RemoteArchiveOptions,
): Promise<OpenedImage | null> {
  const archive = new RangedArchive(s3, ref, opts);
  const log = opts.logger.child({ reader: 'remote-archive' });
  const startsWithTar = startsWithTarHeader(await archive.read(0, Math.min(512, ref.size)));
  opts.onFirstBlock?.(startsWithTar);
  if (!startsWithTar) return null;
  const list = await walkMembers(archive, opts.limits, opts.maxWalkRequests ?? MAX_WALK_REQUESTS);
  if (list === null) return null;
  if (list === 'too-many-requests') {
    log.warn('container archive has too many members to read by range; streaming it instead', {
      requests: archive.requests,
      bytes: archive.bytes,
    });
    return null;
  }
  archive.dropWindow();
  const members = new ArchiveMembers(list);
  const readJson = async (
    member: IndexedMember,
    what: string,
    blob?: BlobRef,
  ): Promise<unknown> => {
    checkJsonMember(member, what);
    const bytes = await archive.dataOf(member);
    if (blob !== undefined) verifyBlobBytes(bytes, blob, what);
    return parseJsonBytes(bytes, what);
  };
  const plan = await readImagePlanAsync(members, readJson);
  checkJsonMember(plan.config.member, 'the image config');
  const configBytes = await archive.dataOf(plan.config.member);
  verifyBlobBytes(configBytes, plan.config, 'the image config');
  const config = parseImageConfig(parseJsonBytes(configBytes, 'the image config'));
  if (config.diffIds.length !== plan.layers.length) {
    throw new ImageError(
      'IMAGE_MANIFEST_INVALID',
      `the manifest names ${plan.layers.length} layers but the config's rootfs.diff_ids has ${config.diffIds.length}`,
    );
  }
  refuseRepeatedBlobs(plan.layers);
  checkLayerCount(plan.layers.length, opts.limits);
  checkChainBytes(
    plan.layers.reduce((n, b) => n + b.member.size, 0),
    opts.limits,
  );
  const diffIds = config.diffIds.map((hex) => `sha256:${hex}`);
  const chainIds = chainIdsOf(diffIds);

  let layerBytes = 0;
  const layers: LayerSource[] = [];
  for (const [i, blob] of plan.layers.entries()) {
    const n = i + 1;
    checkLayerMediaType(blob, n);
    checkBlobSize(blob, `layer ${n}`);
    if (blob.member.size === 0)
      throw new ImageError('LAYER_NOT_TAR', `layer ${n} is empty, not a tar`);
    const compression = compressionOf(await archive.headOf(blob.member));
    if (compression === 'xz')
      throw new ImageError(
        'LAYER_NOT_TAR',
        `layer ${n} is xz-compressed, which no layer media type allows`,
      );
    layers.push(
      remoteLayer(s3, ref, opts, blob, {
        position: n,
        diffId: diffIds[i]!,
        chainId: chainIds[i]!,
        compression,
        kept: archive.keptData(blob.member),
        onBytes: (b) => (layerBytes += b),
      }),
    );
  }
  const walk: HeaderWalkStats = {
    members: list.length,
    requests: archive.requests,
    bytes: archive.bytes,
  };
  log.info('container archive read by range', {
    layout: plan.layout,
    chosen: plan.chosen,
    layers: layers.length,
    ...walk,
  });
  return {
    format: plan.layout === 'oci' ? 'oci-archive' : 'docker-archive',
    compression: 'none',
    layout: plan.layout,
    chosen: plan.chosen,
    manifestDigest: plan.manifestDigest,
    config: config.run,
    layers,
    bytesFetched: () => archive.bytes + layerBytes,
    spooledBytes: () => 0,
    release: () => undefined,
  };
}

/** One layer blob of the archive, fetched by range when opened and checked on the way. */
function remoteLayer(
  s3: S3Client,
  ref: ObjectRef,
  opts: RemoteArchiveOptions,
  blob: BlobRef,
  layer: {
    position: number;
    diffId: string;
    chainId: string;
    compression: ImageCompression;
    /** The whole blob when the header walk already holds it. */
    kept: Buffer | undefined;
    onBytes: (bytes: number) => void;
  },
): LayerSource {
  const n = layer.position;
  const { member } = blob;
  let found: LayerDigests | null = null;

  /** The blob's bytes: kept from the header walk (a small layer), else fetched by range now. */
  function blobBytes(signal: AbortSignal): AsyncIterator<Uint8Array> {
    const kept = layer.kept;
    if (kept !== undefined) return Readable.from([kept])[Symbol.asyncIterator]();
    let counted = 0;
    return downloadObject(s3, ref, {
      window: { start: member.dataOffset, end: member.dataOffset + member.size - 1 },
      partSize: opts.partSize,
      concurrency: opts.concurrency,
      signal,
      logger: opts.logger,
      onBytes: (total) => {
        layer.onBytes(total - counted);
        counted = total;
      },
    }).chunks[Symbol.asyncIterator]();
  }

  async function* open(signal: AbortSignal): AsyncGenerator<Buffer> {
    found = null;
    // The blob is hashed here, so a layer that fails to decompress can be
    // told apart: a blob that is not what its digest names, or a bad layer.
    const blobIt = blobBytes(signal);
    const blobHash = createHash('sha256');
    async function* blobChunks(): AsyncGenerator<Uint8Array> {
      for (;;) {
        const r = await blobIt.next();
        if (r.done === true) return;
        blobHash.update(r.value);
        yield r.value;
      }
    }
    const diff = createHash('sha256');
    let tarBytes = 0;
    try {
      for await (const chunk of decompress(blobChunks(), layer.compression, `layer ${n}`)) {
        diff.update(chunk);
        tarBytes += chunk.length;
        yield chunk;
      }
    } catch (err) {
      if (!isThinrelayError(err) || err.code !== 'ARCHIVE_MALFORMED') throw err;
      // Corrupt compressed data: read the rest of the blob to say which.
      for (let r = await blobIt.next(); r.done !== true; r = await blobIt.next())
        blobHash.update(r.value);
      checkBlobDigest(blob, blobHash.digest('hex'), `layer ${n}`);
      throw new ImageError('LAYER_NOT_TAR', `layer ${n}: ${err.message}`, undefined, {
        cause: err,
      });
    } finally {
      // Stopped early or failed: the download must not keep running behind us.
      await blobIt.return?.();
    }
    // The downloader has checked the length; the digests are ours to check.
    const blobSha256 = blobHash.digest('hex');
    const diffId = diff.digest('hex');
    // The diff_id first: for an uncompressed layer it is the blob digest too, and says more.
    verifyDiffId(diffId, layer.diffId.slice(7), n);
    checkBlobDigest(blob, blobSha256, `layer ${n}`);
    found = { diffId: layer.diffId, chainId: layer.chainId, tarBytes };
  }

  return {
    position: n,
    diffId: layer.diffId,
    chainId: layer.chainId,
    compression: layer.compression,
    blobBytes: member.size,
    open,
    digests: () => found,
  };
}
