/** A state dir on its own small ext4 (so "full" is real) or xfs (reflinks), and read-only queries of its database. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { dbFileName } from '../../host-agent/src/store/db.js';
import { releaseStateDir } from './host-leaks.js';

export interface SmallFilesystem {
  /** Where the filesystem is mounted. */
  mnt: string;
  /** `<mnt>/state`, not created yet. */
  stateDir: string;
  /** Release the state dir's devices and mounts, unmount, delete. */
  release(): void;
}

/**
 * A small ext4 (or xfs with reflink: the loop backend's in-process clone)
 * filesystem on a loop device, mounted at a fresh dir. `release` goes in
 * t.after once the host's own cleanup is registered: hooks run in the order
 * they were added. xfs needs at least 300 MiB.
 */
export function smallFilesystem(sizeMiB: number, type: 'ext4' | 'xfs' = 'ext4'): SmallFilesystem {
  const base = mkdtempSync(join(tmpdir(), 'thinrelay-smallfs-'));
  const image = join(base, 'fs.img');
  const mnt = join(base, 'mnt');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', `${sizeMiB}M`, image]);
  if (type === 'xfs') execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
  else execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', image]);
  execFileSync('mount', ['-o', 'loop', image, mnt]);
  const stateDir = join(mnt, 'state');
  return {
    mnt,
    stateDir,
    release: () => {
      releaseStateDir(stateDir);
      execFileSync('umount', [mnt]);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

/** Rows of a read-only query of a state dir's database. */
export function queryState<T>(stateDir: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(join(stateDir, dbFileName), { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}
