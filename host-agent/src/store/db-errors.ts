/**
 * State-database faults as typed errors. SQLite reports them as SqliteError
 * with a code (SQLITE_BUSY, SQLITE_FULL, SQLITE_CORRUPT, ...); each becomes
 * an environment error with the fix for that fault, so no database fault ever
 * reaches an operator as "(unexpected)" or as a failed image.
 */
import { statfsSync } from 'node:fs';
import {
  EnvironmentError,
  TemporaryEnvironmentError,
  errorMessage,
  isThinrelayError,
} from '../errors.js';

/** The SQLite result code of an error (extended codes included), if it is one. */
export function sqliteCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined;
}

export const restoreHint =
  'stop the agent, move images.db (and images.db-wal, images.db-shm) aside, copy the newest `thinrelay state backup` file to images.db, then run `thinrelay gc` (docs/operating-a-host.md: "Restoring the state database")';

/** The typed error for a database fault, or undefined when err is not one. */
export function databaseError(err: unknown, stateDir: string): EnvironmentError | undefined {
  if (isThinrelayError(err)) return undefined;
  const code = sqliteCode(err);
  if (code === undefined) return undefined;
  const what = `state database ${stateDir}/images.db: ${errorMessage(err)} (${code})`;
  const cause = { cause: err };
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new TemporaryEnvironmentError(
      'DB_BUSY',
      what,
      'another process holds the database write lock (an open `sqlite3` shell, a stuck thinrelay); end it, then retry',
      cause,
    );
  }
  if (code === 'SQLITE_CORRUPT' || code.startsWith('SQLITE_CORRUPT_') || code === 'SQLITE_NOTADB') {
    return new EnvironmentError('DB_CORRUPT', what, restoreHint, cause);
  }
  if (
    code.startsWith('SQLITE_FULL') ||
    (code.startsWith('SQLITE_IOERR') && stateDirFull(stateDir))
  ) {
    return new EnvironmentError(
      'STATE_FULL',
      what,
      `the filesystem of ${stateDir} is full: free space there (\`thinrelay gc\` releases failed leftovers), or move --state-dir`,
      cause,
    );
  }
  if (
    code.startsWith('SQLITE_READONLY') ||
    code.startsWith('SQLITE_CANTOPEN') ||
    code.startsWith('SQLITE_PERM') ||
    code.startsWith('SQLITE_AUTH')
  ) {
    return new EnvironmentError(
      'DB_READONLY',
      what,
      `thinrelay must write ${stateDir}: check that its filesystem is mounted read-write (findmnt -T ${stateDir}) and the files are root's and writable`,
      cause,
    );
  }
  if (code.startsWith('SQLITE_IOERR')) {
    return new EnvironmentError(
      'STATE_DIR',
      what,
      `the disk under ${stateDir} reports I/O errors: check it (dmesg), then \`thinrelay doctor\``,
      cause,
    );
  }
  return new EnvironmentError('STATE_DIR', what, 'run `thinrelay doctor`', cause);
}

/** Less than this free on the state dir's filesystem counts as full. */
export const fullThresholdBytes = 16 * 1024 * 1024;

export function stateDirFull(stateDir: string): boolean {
  try {
    const fs = statfsSync(stateDir);
    return fs.bavail * fs.bsize < fullThresholdBytes;
  } catch {
    return false;
  }
}
