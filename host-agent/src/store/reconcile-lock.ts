/**
 * One reconcile at a time per state dir. Two processes reconciling the same
 * leftovers (a restored backup, two runs started together) would otherwise
 * act on one inventory twice: both detach the same loop device, and the
 * second detach may hit a device number already reused for someone else's
 * file. The lock is SQLite's own (fcntl) lock on <state-dir>/reconcile.lock,
 * held by an open EXCLUSIVE transaction, so the kernel releases it however
 * the holder dies; waiters poll, so the event loop never blocks on it.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { sqliteCode } from './db-errors.js';

export const reconcileLockFileName = 'reconcile.lock';
const pollMs = 25;

/** Reconciles of this process, chained: the file lock orders processes, this orders callers. */
const tails = new Map<string, Promise<unknown>>();

export function withReconcileLock<T>(
  stateDir: string | null,
  logger: Logger,
  fn: () => Promise<T>,
): Promise<T> {
  if (stateDir === null) return fn();
  const previous = tails.get(stateDir) ?? Promise.resolve();
  const mine = previous.catch(() => undefined).then(() => holdingFileLock(stateDir, logger, fn));
  tails.set(stateDir, mine);
  void mine
    .finally(() => {
      if (tails.get(stateDir) === mine) tails.delete(stateDir);
    })
    .catch(() => undefined);
  return mine;
}

async function holdingFileLock<T>(
  stateDir: string,
  logger: Logger,
  fn: () => Promise<T>,
): Promise<T> {
  const db = new Database(join(stateDir, reconcileLockFileName));
  try {
    db.pragma('busy_timeout = 0');
    db.pragma('locking_mode = EXCLUSIVE');
    let waited = false;
    for (;;) {
      try {
        db.exec('BEGIN EXCLUSIVE');
        break;
      } catch (err) {
        if (sqliteCode(err)?.startsWith('SQLITE_BUSY') !== true) throw err;
        if (!waited) logger.info('waiting for another process to finish reconciling', { stateDir });
        waited = true;
        await sleep(pollMs);
      }
    }
    return await fn();
  } finally {
    db.close();
  }
}
