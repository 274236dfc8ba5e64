/**
 * unpackArchive: streams a tar (plain or gzip) from an untrusted source into
 * a fresh filesystem, reproducing what `tar --numeric-owner --xattrs -xpf`
 * (GNU tar 1.34, as root) would extract, and refusing anything that could
 * write outside the root. Entries are written synchronously as the reader
 * meets them; directory metadata, xattrs, device nodes and the times Node
 * cannot set exactly are applied at the end.
 */
import { resolve } from 'node:path';
import { ImageError, isThinrelayError, type ImageFailureCode } from '../errors.js';
import type { ImageLimits } from '../limits.js';
import {
  openArchive,
  type ArchiveSource,
  type ArchiveStream,
  type Compression,
} from './compression.js';
import { Extractor, type MemberCounts } from './extractor.js';
import { TarReader } from './tar-reader.js';

export interface UnpackOptions {
  /** Existing directory (a freshly made, just-mounted ext4 filesystem: empty except lost+found). */
  root: string;
  limits: Pick<ImageLimits, 'maxUnpackedBytes' | 'maxEntries' | 'maxPathLength' | 'maxPathDepth'>;
  /** Called now and then (not per chunk) with the count of archive bytes consumed so far (compressed bytes, as read from source). */
  onProgress?: (sourceBytes: number) => void;
  signal?: AbortSignal;
}

export interface UnpackStats extends MemberCounts {
  compression: Compression;
}

/** "Not a tar" is more useful with a guess at what it is instead. */
function withFormatHint(err: unknown, archive: ArchiveStream): unknown {
  if (
    !isThinrelayError(err) ||
    err.code !== 'ARCHIVE_NOT_TAR' ||
    archive.formatHint === undefined
  ) {
    return err;
  }
  return new ImageError('ARCHIVE_NOT_TAR', `${err.message}: ${archive.formatHint}`, undefined, {
    cause: err,
  });
}

/**
 * Unpacks `source` into `opts.root`. Rejects with an ImageError (reason code
 * and a one-line message naming the member) for any bad or hostile input,
 * the signal's reason when aborted, or the source's own error. On failure
 * the root holds a partial tree: the caller discards the volume.
 */
export async function unpackArchive(
  source: ArchiveSource,
  opts: UnpackOptions,
): Promise<UnpackStats> {
  opts.signal?.throwIfAborted();
  const extractor = new Extractor(resolve(opts.root), opts.limits);
  const compression = await extractArchive(source, extractor, opts);
  return { ...extractor.stats, compression };
}

/**
 * Streams `source` through the tar reader into `extractor`, then applies
 * what waits for the end. `plainOnly`: a gzip source is refused with that
 * code (a layer is handed over already decompressed).
 */
export async function extractArchive(
  source: ArchiveSource,
  extractor: Extractor,
  opts: Omit<UnpackOptions, 'root'> & { plainOnly?: ImageFailureCode },
): Promise<Compression> {
  const archive = await openArchive(source, { onProgress: opts.onProgress, signal: opts.signal });
  if (opts.plainOnly !== undefined && archive.compression !== 'none') {
    await archive.close();
    throw new ImageError(
      opts.plainOnly,
      `the stream is ${archive.compression}-compressed, not a plain tar`,
    );
  }
  const reader = new TarReader(extractor, {
    maxContentBytes: opts.limits.maxUnpackedBytes,
    maxEntries: opts.limits.maxEntries,
  });
  try {
    for (let chunk = await archive.next(); chunk !== null; chunk = await archive.next()) {
      reader.push(chunk);
      if (reader.ended) break;
    }
    reader.finish();
    await archive.drain();
    await extractor.finish(opts.signal);
  } catch (err) {
    try {
      extractor.abandon();
    } finally {
      await archive.close();
    }
    throw withFormatHint(err, archive);
  }
  archive.reportProgress();
  return archive.compression;
}
