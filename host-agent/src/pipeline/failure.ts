/** How a failure is described in the store and released on storage. */
import { errorMessage, isThinrelayError, type ReasonCode } from '../errors.js';
import type { StepError } from '../store/jobs.js';
import type { JobContext } from './context.js';

export function describeFailure(err: unknown, signal: AbortSignal): StepError {
  if (signal.aborted)
    return {
      code: 'INTERRUPTED' satisfies ReasonCode,
      message: `interrupted: ${errorMessage(signal.reason)}`,
    };
  if (isThinrelayError(err)) return { code: err.code, message: err.message };
  return { code: 'STORAGE_FAILED' satisfies ReasonCode, message: errorMessage(err) };
}

/**
 * Release what a failed job created: its snapshots, and its volumes unless
 * they hold a ready blob (shared content) — or are kept for inspection.
 * A release that itself fails leaves the object in `removing` for the next
 * reconcile, and is logged, never hidden.
 */
export async function releaseFailedJob(ctx: JobContext): Promise<void> {
  const { store, objects, job } = ctx;
  for (const row of store.objects.forJob(job.id)) {
    if (row.state === 'removed') continue;
    const blob = row.kind === 'volume' ? store.blobs.byVolume(row.id) : undefined;
    if (blob?.status === 'ready') continue;
    try {
      if (row.kind === 'volume' && ctx.keepOnFailure && row.state !== 'kept')
        await objects.keep(row);
      else if (row.state !== 'kept') await objects.remove(row);
      if (blob !== undefined && blob.status === 'unpacking')
        store.blobs.setStatus(blob.id, 'failed');
    } catch (err) {
      ctx.logger.error("could not release a failed job's storage; reconcile will retry", {
        job: job.id,
        object: row.id,
        error: errorMessage(err),
      });
    }
  }
}
