/**
 * Spools left behind: <state-dir>/spool/job-N holds a container archive
 * while job N unpacks it, and is removed on every way out of the job, but
 * not when its process is killed (kill -9, power loss). gc reclaims each
 * spool whose job is over, gone from the store, or open under an owner that
 * is dead; a live job's spool is never touched.
 */
import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spoolRoot } from '../image/spool.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { ReconcileAction } from '../pipeline/reconcile.js';
import { isOwnerAlive } from '../store/owner.js';

/** Remove spools of jobs no live process runs; one action each, with the bytes freed. */
export function reclaimSpools(
  deps: Pick<PipelineDeps, 'store' | 'config' | 'owner' | 'logger'>,
  only?: { jobId: number },
): ReconcileAction[] {
  const root = spoolRoot(deps.config.stateDir);
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const actions: ReconcileAction[] = [];
  for (const name of names) {
    const m = /^job-(\d+)$/.exec(name);
    if (m === null) continue;
    const jobId = Number(m[1]);
    if (only !== undefined && only.jobId !== jobId) continue;
    const path = join(root, name);
    const freed = reclaimUnlessLive(deps, jobId, path);
    if (freed !== null)
      actions.push({
        object: path,
        action: 'removed',
        reason: freed.reason,
        freedBytes: freed.bytes,
      });
  }
  return actions;
}

/**
 * Deletes job `jobId`'s spool at `path` unless the job is live, holding the
 * job meanwhile: an open job of a dead owner is claimed for the deletion and
 * handed back after, so a process taking it over waits (its owner reads
 * alive) instead of spooling into a directory being deleted.
 */
function reclaimUnlessLive(
  deps: Pick<PipelineDeps, 'store' | 'owner'>,
  jobId: number,
  path: string,
): { reason: string; bytes: number } | null {
  const { store, owner } = deps;
  const job = store.jobs.get(jobId);
  const open = job !== undefined && job.status !== 'complete' && job.status !== 'failed';
  if (open && (job.owner === owner || isOwnerAlive(job.owner))) return null;
  const claimed = open && store.tx(() => store.jobs.claim(jobId, job.owner, owner));
  if (open && !claimed) return null; // taken over meanwhile: its new owner owns the spool
  try {
    const bytes = diskUsage(path);
    rmSync(path, { recursive: true, force: true });
    const reason =
      job === undefined
        ? `spool of job ${jobId}, which the store does not know: ${bytes} bytes freed`
        : open
          ? `spool of job ${jobId}, interrupted (its process died): ${bytes} bytes freed`
          : `spool of job ${jobId}, ${job.status}: ${bytes} bytes freed`;
    return { reason, bytes };
  } finally {
    if (claimed) store.tx(() => store.jobs.claim(jobId, owner, job.owner));
  }
}

/** Bytes allocated on disk under `path` (what removing it frees). */
function diskUsage(path: string): number {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st === undefined) return 0;
  let bytes = st.blocks * 512;
  if (st.isDirectory()) for (const name of readdirSync(path)) bytes += diskUsage(join(path, name));
  return bytes;
}
