/**
 * Per-image limits that keep one hostile or oversized blob from filling the
 * host. Every limit is configurable (see config.ts); exceeding one fails the
 * image with a LIMIT_* reason code.
 */
import { ImageError } from './errors.js';

export interface ImageLimits {
  /** Largest compressed or plain object we will download, in bytes. */
  maxBlobBytes: number;
  /** Largest total of file content written by one unpack, in bytes. */
  maxUnpackedBytes: number;
  /** Most archive members in one image. */
  maxEntries: number;
  /** Longest member path, in bytes (after normalisation). */
  maxPathLength: number;
  /** Deepest member path, in components. */
  maxPathDepth: number;
  /** Most layers in one container image. */
  maxLayers: number;
  /** Largest total of one container image's layer tars (its chain), in bytes. */
  maxChainBytes: number;
  /** Largest spool of one container archive (decompressed, with its decompressed layers), in bytes. */
  maxSpoolBytes: number;
}

export const defaultLimits: ImageLimits = {
  maxBlobBytes: 8 * 1024 ** 3,
  maxUnpackedBytes: 16 * 1024 ** 3,
  maxEntries: 1_000_000,
  maxPathLength: 4095,
  maxPathDepth: 256,
  // overlayfs stacks at most 128 lower layers, so Docker and containerd never run deeper images.
  maxLayers: 128,
  maxChainBytes: 32 * 1024 ** 3,
  maxSpoolBytes: 16 * 1024 ** 3,
};

/** Refuses an image with more layers than the limit, before any layer is read. */
export function checkLayerCount(layers: number, limits: Pick<ImageLimits, 'maxLayers'>): void {
  if (layers > limits.maxLayers)
    throw new ImageError(
      'LIMIT_LAYER_COUNT',
      `the image has ${layers} layers, more than the limit of ${limits.maxLayers}`,
      'squash the image (Docker and containerd run at most 128 layers); THINRELAY_MAX_LAYERS sets the limit',
    );
}

/** Refuses a chain whose layers' tars total more than the limit (known sizes before, read sizes during). */
export function checkChainBytes(bytes: number, limits: Pick<ImageLimits, 'maxChainBytes'>): void {
  if (bytes > limits.maxChainBytes)
    throw new ImageError(
      'LIMIT_CHAIN_BYTES',
      `the image's layers total at least ${bytes} bytes, more than the chain limit of ${limits.maxChainBytes}`,
      'THINRELAY_MAX_CHAIN_BYTES sets the limit',
    );
}
