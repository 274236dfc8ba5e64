/**
 * openImage: an uploaded object, streamed from S3, as an ordered list of
 * layers (image/layer-source.ts). Content decides: a flat rootfs tar is a
 * one-layer image streamed straight through (no spool, today's unpacker and
 * speed); a `docker save` or OCI archive is spooled to local disk (its
 * manifest comes last), verified whole — every blob and diff_id, and the
 * layer tree's hostile-input checks — before any layer is handed out, and
 * each layer's plain tar is then read from the spool.
 *
 * An archive uncompressed at the outer level is better read with ranged GETs
 * (image/remote-archive.ts) so held layers are never downloaded; this is the
 * path for everything else.
 */
import { createHash } from 'node:crypto';
import type { ImageLimits } from '../limits.js';
import { openContainerImage } from './container-image.js';
import {
  chainIdsOf,
  flatChainId,
  type LayerDigests,
  type LayerSource,
  type OpenedImage,
} from './layer-source.js';
import { sniffArchive } from './sniff.js';
import { SpoolDir } from './spool.js';
import { InternalError } from '../errors.js';

export interface SourcedImage extends OpenedImage {
  /**
   * A flat tar's own bytes (plain or gzip tar) for today's unpacker, which
   * reads them fastest; null for a container image. Read this or the one
   * layer's open(), not both.
   */
  flatBytes: (() => AsyncIterable<Buffer>) | null;
}

/** Hashes what passes through; `done` gets the hex sha256 and size once it ends. */
async function* hashed(
  source: AsyncIterable<Buffer>,
  done: (sha256: string, size: number) => void,
): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of source) {
    hash.update(chunk);
    size += chunk.length;
    yield chunk;
  }
  done(hash.digest('hex'), size);
}

export async function openImage(
  object: AsyncIterable<Uint8Array>,
  opts: {
    spoolDir: string;
    limits: ImageLimits;
    /** Free space the spool leaves on the state filesystem. */
    reserveBytes: number;
    bytesFetched: () => number;
  },
): Promise<SourcedImage> {
  const sniffed = await sniffArchive(object);
  if (sniffed.kind === 'flat') {
    let found: LayerDigests | null = null;
    let used = false;
    const layer: LayerSource = {
      position: 1,
      diffId: null,
      chainId: null,
      compression: sniffed.compression,
      blobBytes: 0,
      open: () => {
        if (used) throw new InternalError('a streamed flat tar can be read once');
        used = true;
        return hashed(sniffed.tar(), (hex, size) => {
          const diffId = `sha256:${hex}`;
          found = { diffId, chainId: flatChainId(diffId), tarBytes: size };
        });
      },
      digests: () => found,
    };
    const own = sniffed.compression === 'none' || sniffed.compression === 'gzip';
    return {
      format: 'flat',
      compression: sniffed.compression,
      layout: null,
      chosen: null,
      manifestDigest: null,
      config: null,
      layers: [layer],
      bytesFetched: opts.bytesFetched,
      spooledBytes: () => 0,
      release: () => undefined,
      flatBytes: () => {
        if (used) throw new InternalError('a streamed flat tar can be read once');
        used = true;
        return own ? sniffed.raw : sniffed.tar();
      },
    };
  }
  const spool = new SpoolDir(opts.spoolDir, {
    maxBytes: opts.limits.maxSpoolBytes,
    reserveBytes: opts.reserveBytes,
  });
  try {
    const archive = await spool.write('archive.tar', sniffed.tar());
    const container = await openContainerImage(spool, archive, opts.limits);
    const diffIds = container.layers.map((l) => `sha256:${l.diffId}`);
    const chainIds = chainIdsOf(diffIds);
    const layers = container.layers.map((l, i): LayerSource => {
      let found: LayerDigests | null = null;
      return {
        position: i + 1,
        diffId: diffIds[i]!,
        chainId: chainIds[i]!,
        compression: l.compression,
        blobBytes: l.size,
        // Verified while spooling; read afresh from the spool on every call.
        open: () =>
          hashed(container.layerTar(i), (hex, size) => {
            found = { diffId: `sha256:${hex}`, chainId: chainIds[i]!, tarBytes: size };
          }),
        digests: () => found,
      };
    });
    return {
      format: container.layout === 'oci' ? 'oci-archive' : 'docker-archive',
      compression: sniffed.compression,
      layout: container.layout,
      chosen: container.chosen,
      manifestDigest: container.manifestDigest,
      config: container.config,
      layers,
      bytesFetched: opts.bytesFetched,
      spooledBytes: () => container.spooledBytes,
      release: () => spool.release(),
      flatBytes: null,
    };
  } catch (err) {
    spool.release();
    throw err;
  }
}

/** What `show --json` and `thinrelay config` print about a container image; null for a flat tar. */
export function describeImage(image: OpenedImage): string | null {
  if (image.format === 'flat') return null;
  return JSON.stringify({
    format: image.format,
    chosen: image.chosen,
    // What an OCI archive's signature covers: `thinrelay verify` checks it again from here.
    manifestDigest: image.manifestDigest,
    layers: image.layers.map((l) => ({
      diffId: l.diffId,
      chainId: l.chainId,
      compression: l.compression,
      size: l.blobBytes,
    })),
    config: image.config,
  });
}
