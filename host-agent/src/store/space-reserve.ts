/**
 * A few MiB of real blocks kept in the state dir (db-reserve) for the day its
 * filesystem fills: deleting the file lets the failure be recorded and the
 * intents of `remove`, `gc` and reconcile be written — the writes that free
 * the space. Put back once there is room again.
 */
import { closeSync, existsSync, fsyncSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const reserveFileName = 'db-reserve';
export const reserveBytes = 8 * 1024 * 1024;

export function reservePath(stateDir: string): string {
  return join(stateDir, reserveFileName);
}

/** Write the reserve if it is missing and the filesystem has ample room; never throws. */
export function ensureReserve(stateDir: string): boolean {
  const path = reservePath(stateDir);
  if (existsSync(path)) return true;
  try {
    const fs = statfsSync(stateDir);
    if (fs.bavail * fs.bsize < 4 * reserveBytes) return false;
    const fd = openSync(path, 'wx', 0o600);
    try {
      // Zeros written, not a sparse length: the blocks must really be taken.
      const chunk = Buffer.alloc(1024 * 1024);
      for (let done = 0; done < reserveBytes; done += chunk.length) writeSync(fd, chunk);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return true;
  } catch {
    rmSync(path, { force: true });
    return false;
  }
}

/** Give the reserve back to the filesystem; true if there was one. */
export function releaseReserve(stateDir: string): boolean {
  const path = reservePath(stateDir);
  if (!existsSync(path)) return false;
  rmSync(path, { force: true });
  return true;
}
