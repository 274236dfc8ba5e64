/**
 * The contract between where an image's bytes come from and the layered
 * pipeline that applies them: an uploaded object, whatever its form, is an
 * ordered list of layers (base first), each named by its OCI chain ID so a
 * host can tell which ones it already holds, and each opened only when it
 * must be applied. A flat rootfs tar is a one-layer image whose IDs are
 * known only once its bytes have been read.
 *
 * Implementations: image/image-source.ts (flat tars streamed, and container
 * archives spooled when the object is compressed as a whole) and
 * image/remote-archive.ts (an uncompressed container archive read with
 * ranged GETs: member headers first, then only the layers asked for).
 */
import { createHash } from 'node:crypto';
import type { ImageCompression } from '../layer/compression.js';
import type { RunConfig } from './image-config.js';
import type { ImageLayout } from './manifest.js';

export type ImageFormat = 'flat' | 'oci-archive' | 'docker-archive';

/** The digests a layer was found to have once its bytes were read. */
export interface LayerDigests {
  /** "sha256:<hex>" of the uncompressed layer tar. */
  diffId: string;
  /** "sha256:<hex>": the OCI ChainID of this layer over the layers below it (flatChainId for a flat tar). */
  chainId: string;
  /** Bytes of the uncompressed tar. */
  tarBytes: number;
}

export interface LayerSource {
  /** 1-based, base first. */
  position: number;
  /** "sha256:<hex>" from the config's rootfs.diff_ids; null for a flat tar until read. */
  diffId: string | null;
  /** OCI ChainID (image-spec config.md); null for a flat tar until read. */
  chainId: string | null;
  /** The layer blob's compression as stored in the archive. */
  compression: ImageCompression;
  /** Bytes of the blob as stored in the archive (what fetching it costs). */
  blobBytes: number;
  /**
   * The layer's plain (uncompressed) tar, streamed. Every digest and size the
   * image names for this layer is checked on the way: when one differs the
   * iterator throws an ImageError (LAYER_DIGEST_MISMATCH, …) instead of
   * ending, so a consumer that already wrote the bytes must discard them.
   * May be called again after a failure or crash (a retry reads it afresh).
   */
  open(signal: AbortSignal): AsyncIterable<Buffer>;
  /** What open() found, once its iterator has ended without throwing; null before. */
  digests(): LayerDigests | null;
}

export interface OpenedImage {
  format: ImageFormat;
  /** Compression of the uploaded object as a whole. */
  compression: ImageCompression;
  /** Container images: the archive's layout and which manifest was taken ("linux/amd64", a ref name…). */
  layout: ImageLayout | null;
  chosen: string | null;
  /** OCI archives: the digest index.json names, which their signature covers; null otherwise. */
  manifestDigest: string | null;
  /** Container images: the run config a VM's init needs; null for a flat tar. */
  config: RunConfig | null;
  layers: LayerSource[];
  /** Bytes read from S3 for this image so far (ranged reads included). */
  bytesFetched(): number;
  /** Bytes written to the local spool (0 when nothing was spooled). */
  spooledBytes(): number;
  /** Closes and deletes any spool; safe on every path, more than once. */
  release(): void;
}

/**
 * OCI ChainIDs (image-spec config.md) of layers given their DiffIDs, base
 * first: ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
 * Equal ChainIDs mean equal filesystems, which is what lets images share layers.
 */
export function chainIdsOf(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    const below = out.at(-1);
    out.push(
      below === undefined
        ? diffId
        : `sha256:${createHash('sha256').update(`${below} ${diffId}`).digest('hex')}`,
    );
  }
  return out;
}

/**
 * The sharing key of a flat tar's volume: its diff_id marked "flat:". A flat
 * tar is unpacked by other rules than a layer (`.wh.` names are ordinary
 * files in it, whiteouts in a layer), so the same bytes give another tree
 * either way and must never share a volume with a layer of that chain ID.
 * Migration 7 gave stored flat rows this key.
 */
export function flatChainId(diffId: string): string {
  return `flat:${diffId}`;
}
