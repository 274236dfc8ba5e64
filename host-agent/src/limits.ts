/**
 * Per-image limits that keep one hostile or oversized blob from filling the
 * host. Every limit is configurable (see config.ts); exceeding one fails the
 * image with a LIMIT_* reason code.
 */
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
}

export const defaultLimits: ImageLimits = {
  maxBlobBytes: 8 * 1024 ** 3,
  maxUnpackedBytes: 16 * 1024 ** 3,
  maxEntries: 1_000_000,
  maxPathLength: 4095,
  maxPathDepth: 256,
};
