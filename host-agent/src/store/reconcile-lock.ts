/**
 * One reconcile at a time per state dir. Two processes reconciling the same
 * leftovers (a restored backup, two runs started together) would otherwise
 * act on one inventory twice: both detach the same loop device, and the
 * second detach may hit a device number already reused for someone else's
 * file. The lock is a FileLock on <state-dir>/reconcile.lock, which the
 * kernel releases however the holder dies; waiters poll, so the event loop
 * never blocks on it.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { FileLock } from './file-lock.js';

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
  const lock = new FileLock(join(stateDir, reconcileLockFileName));
  try {
    for (let waited = false; !lock.tryAcquire(); waited = true) {
      if (!waited) logger.info('waiting for another process to finish reconciling', { stateDir });
      await sleep(pollMs);
    }
    return await fn();
  } finally {
    lock.close();
  }
}
