/**
 * Container images: the front of the unpack step. An uploaded object is told
 * apart by content: a flat rootfs tar goes to the unpacker as before (zstd
 * and xz decompressed on the way); a `docker save` or OCI archive is spooled,
 * verified and flattened (image/container-image.ts) into one tar for it.
 */
import type { ImageLimits } from '../limits.js';
import type { ImageCompression } from './compression.js';
import { openContainerImage, type ContainerImage } from './container-image.js';
import { sniffArchive } from './sniff.js';
import { SpoolDir } from './spool.js';

export type { ContainerImage } from './container-image.js';
export type { RunConfig } from './image-config.js';

export interface PreparedUpload {
  /** What to hand the unpacker: the object's own bytes (plain or gzip tar) or a plain tar. */
  source: AsyncIterable<Buffer>;
  compression: ImageCompression;
  container: ContainerImage | undefined;
  /** Closes and deletes the spool; safe to call on every path, more than once. */
  release(): void;
}

export async function prepareUpload(
  object: AsyncIterable<Uint8Array>,
  opts: { spoolDir: string; limits: ImageLimits },
): Promise<PreparedUpload> {
  const sniffed = await sniffArchive(object);
  if (sniffed.kind === 'flat') {
    const own = sniffed.compression === 'none' || sniffed.compression === 'gzip';
    return {
      source: own ? sniffed.raw : sniffed.tar(),
      compression: sniffed.compression,
      container: undefined,
      release: () => undefined,
    };
  }
  const spool = new SpoolDir(opts.spoolDir, opts.limits.maxUnpackedBytes);
  try {
    const archive = await spool.write('archive.tar', sniffed.tar());
    const container = await openContainerImage(spool, archive, opts.limits);
    return {
      source: container.tar(),
      compression: sniffed.compression,
      container,
      release: () => spool.release(),
    };
  } catch (err) {
    spool.release();
    throw err;
  }
}

/** What `show --json` and `thinrelay config` print about a container image. */
export function describeContainer(c: ContainerImage): string {
  return JSON.stringify({
    format: c.layout === 'oci' ? 'oci-archive' : 'docker-archive',
    chosen: c.chosen,
    layers: c.layers,
    config: c.config,
  });
}
