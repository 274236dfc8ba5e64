/**
 * Local spool files for container archives. The manifest of a `docker save`
 * or OCI archive usually comes last, so this slice writes the (decompressed)
 * archive and each compressed layer's tar to the state dir, bounded by
 * LIMIT_UNPACKED_BYTES, and reads members by offset. The spool directory is
 * per job: it is emptied when the unpack step starts (after a kill -9 too)
 * and removed on every way out.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { ImageError } from '../errors.js';

export class SpoolDir {
  private readonly fds: number[] = [];
  private bytes = 0;

  constructor(
    readonly path: string,
    private readonly maxBytes: number,
  ) {
    fs.rmSync(path, { recursive: true, force: true });
    fs.mkdirSync(path, { recursive: true, mode: 0o700 });
  }

  /** Writes `source` to a new spool file; returns its fd (open for reading), size and sha256. */
  async write(
    name: string,
    source: AsyncIterable<Buffer>,
  ): Promise<{ fd: number; size: number; sha256: string }> {
    const file = join(this.path, name);
    const fd = fs.openSync(file, 'w+', 0o600);
    this.fds.push(fd);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of source) {
      size += chunk.length;
      this.bytes += chunk.length;
      if (this.bytes > this.maxBytes) {
        throw new ImageError(
          'LIMIT_UNPACKED_BYTES',
          `the image's decompressed archive and layers exceed the limit of ${this.maxBytes} bytes`,
        );
      }
      hash.update(chunk);
      for (let off = 0; off < chunk.length;)
        off += fs.writeSync(fd, chunk, off, chunk.length - off, size - chunk.length + off);
    }
    return { fd, size, sha256: hash.digest('hex') };
  }

  release(): void {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
    fs.rmSync(this.path, { recursive: true, force: true });
  }
}
