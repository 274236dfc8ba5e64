/**
 * Local spool files for container archives. The manifest of a `docker save`
 * or OCI archive usually comes last, so this slice writes the (decompressed)
 * archive and each compressed layer's tar to the state dir, bounded by the
 * spool limit (LIMIT_SPOOL_BYTES: the image's fault) and by the state
 * filesystem's reserve (STATE_FULL: the host's), and reads members by offset.
 * The spool directory is per job: it is emptied when the unpack step starts
 * (after a kill -9 too) and removed on every way out.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError, ImageError, errorMessage } from '../errors.js';

/** Free space is measured at most this many bytes apart, and must leave this much above the reserve. */
const CHECK_EVERY_BYTES = 8 * 1024 * 1024;

/** Where job N spools its archive: <state-dir>/spool/job-N (gc reclaims what a kill -9 left). */
export function spoolDirOf(stateDir: string, jobId: number): string {
  return join(spoolRoot(stateDir), `job-${jobId}`);
}

/** The directory every job's spool is under. */
export function spoolRoot(stateDir: string): string {
  return join(stateDir, 'spool');
}

export interface SpoolLimits {
  /** The image's spool may not exceed this (LIMIT_SPOOL_BYTES). */
  maxBytes: number;
  /** Free space on the state filesystem the spool never takes (STATE_FULL). */
  reserveBytes: number;
}

export class SpoolDir {
  private readonly fds: number[] = [];
  private bytes = 0;
  /** Bytes written since free space was last measured (so the first write measures it). */
  private sinceCheck = CHECK_EVERY_BYTES;

  constructor(
    readonly path: string,
    private readonly limits: SpoolLimits,
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
      if (this.bytes > this.limits.maxBytes) {
        throw new ImageError(
          'LIMIT_SPOOL_BYTES',
          `the image's decompressed archive and layers exceed the spool limit of ${this.limits.maxBytes} bytes`,
          'THINRELAY_MAX_SPOOL_BYTES sets the limit',
        );
      }
      this.sinceCheck += chunk.length;
      if (this.sinceCheck >= CHECK_EVERY_BYTES) {
        this.ensureRoom();
        this.sinceCheck = chunk.length;
      }
      hash.update(chunk);
      try {
        for (let off = 0; off < chunk.length;)
          off += fs.writeSync(fd, chunk, off, chunk.length - off, size - chunk.length + off);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOSPC' && code !== 'EDQUOT') throw err;
        throw this.stateFull(`writing the spool failed: ${errorMessage(err)}`, err);
      }
    }
    return { fd, size, sha256: hash.digest('hex') };
  }

  /** The next CHECK_EVERY_BYTES must leave the reserve free: a host out of space is the host's fault. */
  private ensureRoom(): void {
    const st = fs.statfsSync(this.path);
    const free = st.bavail * st.bsize;
    if (free < this.limits.reserveBytes + CHECK_EVERY_BYTES)
      throw this.stateFull(
        `${free} bytes free, and the spool may not take the last ${this.limits.reserveBytes} (the reserve)`,
      );
  }

  private stateFull(why: string, cause?: unknown): EnvironmentError {
    return new EnvironmentError(
      'STATE_FULL',
      `no room to spool the image at ${this.path} after ${this.bytes} bytes: ${why}`,
      'free space on the state filesystem (`thinrelay gc`), or move --state-dir; the image is not at fault',
      { cause },
    );
  }

  release(): void {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
    fs.rmSync(this.path, { recursive: true, force: true });
  }
}
