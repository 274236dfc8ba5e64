/**
 * applyLayer: one OCI layer (its plain tar, streamed in a single pass) onto a
 * mounted filesystem, as `umoci raw unpack` would apply it: whiteouts remove
 * what the lower layers hold (opaque ones wherever they stand in the tar),
 * files and directories replace each other, hard links may reach lower
 * files, and no symlink is ever followed, whichever layer planted it. The
 * unpacker's extractor does the writing, in layer mode; lower layers are
 * learned lazily from the disk. On failure the filesystem holds a partial
 * layer: the caller discards the volume.
 */
import { resolve } from 'node:path';
import { ImageError, isThinrelayError } from '../errors.js';
import type { ImageLimits } from '../limits.js';
import type { ArchiveSource } from './compression.js';
import { Extractor } from './extractor.js';
import { extractArchive } from './unpack.js';

export interface LayerApplyStats {
  /** Members of the layer tar, whiteouts included. */
  entries: number;
  /** Bytes of file content written. */
  bytes: number;
  whiteouts: number;
  /** Lower paths the whiteouts removed (a directory with its subtree counts once). */
  removed: number;
}

export interface ApplyLayerOptions {
  /** The mounted filesystem (private to this job, nosuid,nodev). */
  root: string;
  /** false: a fresh, empty filesystem (the base layer); true: it holds the lower layers. */
  lower: boolean;
  limits: ImageLimits;
  signal?: AbortSignal;
  /** Called now and then with the count of tar bytes consumed so far. */
  onProgress?: (tarBytes: number) => void;
}

/** A layer that is not a tar says so as a layer problem. */
function asLayerError(err: unknown): unknown {
  if (!isThinrelayError(err)) return err;
  if (err.code !== 'ARCHIVE_NOT_TAR' && err.code !== 'ARCHIVE_EMPTY') return err;
  return new ImageError('LAYER_NOT_TAR', `the layer: ${err.message}`, undefined, { cause: err });
}

export async function applyLayer(
  tar: ArchiveSource,
  opts: ApplyLayerOptions,
): Promise<LayerApplyStats> {
  opts.signal?.throwIfAborted();
  const extractor = new Extractor(resolve(opts.root), opts.limits, { lower: opts.lower });
  try {
    await extractArchive(tar, extractor, {
      limits: opts.limits,
      signal: opts.signal,
      onProgress: opts.onProgress,
      plainOnly: 'LAYER_NOT_TAR',
    });
  } catch (err) {
    throw asLayerError(err);
  }
  return {
    entries: extractor.stats.entries,
    bytes: extractor.stats.contentBytes,
    whiteouts: extractor.whiteoutStats.whiteouts,
    removed: extractor.whiteoutStats.removed,
  };
}
