/**
 * What a failure is, in one place: the host's fault or the image's
 * (asHostFault, spendSpaceBudget), its class (classifyFailure: every caller —
 * the daemon's message outcome, catch-up sync — follows this one rule), how
 * it is described in the store, and releasing what a failed job created.
 */
import {
  AwaitingSignature,
  EnvironmentError,
  ImageError,
  SpaceExhaustedError,
  TransientError,
  UsageError,
  errorMessage,
  imageFailureCodes,
  isThinrelayError,
  type ImageFailureCode,
  type ReasonCode,
} from '../errors.js';
import { databaseError, stateDirFull } from '../store/db-errors.js';
import type { StepError } from '../store/jobs.js';
import { releaseBlobIfUnused } from '../pool/release.js';
import type { JobContext } from './context.js';

export type FailureClass = 'permanent' | 'transient' | 'superseded' | 'interrupted' | 'awaiting';

/**
 * Permanent: the image or message itself is bad — retrying cannot help, the
 * queue's redrive policy takes it to the DLQ — or the host stayed out of
 * space through the retry budget (THINRELAY_SPACE_ATTEMPTS). Transient: the network, S3,
 * this host (space, tools, configuration) — retry later. Superseded: the
 * object changed or vanished since the event; a newer event follows.
 */
export function classifyFailure(err: unknown, signal: AbortSignal): FailureClass {
  if (signal.aborted) return 'interrupted';
  // Not a failure: the image waits for its signature sidecar until a deadline (trust/gate.ts).
  if (err instanceof AwaitingSignature) return 'awaiting';
  if (err instanceof TransientError) return 'transient';
  // A space fault past its retry budget: failed with its reason, no longer retried.
  if (err instanceof SpaceExhaustedError) return 'permanent';
  if (err instanceof EnvironmentError || err instanceof UsageError) return 'transient';
  if (err instanceof ImageError) {
    if (err.code === 'INTERRUPTED') return 'interrupted';
    if (err.code === 'OBJECT_CHANGED' || err.code === 'OBJECT_NOT_FOUND') return 'superseded';
    if (err.code === 'DOWNLOAD_FAILED' || err.code === 'STORAGE_FAILED') return 'transient';
    return 'permanent';
  }
  // An unexpected error is most likely this host's (a tool, the disk): retry.
  return 'transient';
}

/**
 * Whether a failure recorded on an image (its reason code) was permanent, by
 * classifyFailure's rule: catch-up sync does not retry those at the same ETag.
 */
export function isPermanentFailureCode(code: string | null): boolean {
  const known = (imageFailureCodes as readonly string[]).includes(code ?? '');
  return (
    known &&
    classifyFailure(new ImageError(code as ImageFailureCode, ''), new AbortController().signal) ===
      'permanent'
  );
}

/** The reason code a failure is reported with; INTERNAL for an error without one (a bug or an untyped fault). */
export function failureCode(err: unknown): string {
  return isThinrelayError(err) ? err.code : 'INTERNAL';
}

/** A failure as the job and image rows record it. */
export function describeFailure(err: unknown, signal: AbortSignal): StepError {
  if (signal.aborted)
    return {
      code: 'INTERRUPTED' satisfies ReasonCode,
      message: `interrupted: ${errorMessage(signal.reason)}`,
    };
  if (isThinrelayError(err)) return { code: err.code, message: err.message };
  return { code: 'STORAGE_FAILED' satisfies ReasonCode, message: errorMessage(err) };
}

const spaceErrnos = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS']);

/** A write that failed for want of space, or an I/O error that a full backing store causes. */
function isSpaceOrIoError(err: unknown): boolean {
  if (err instanceof ImageError) return err.code === 'VOLUME_FULL' || err.code === 'STORAGE_FAILED';
  if (isThinrelayError(err)) return false;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (typeof code === 'string' && spaceErrnos.has(code)) return true;
  return /no space left|input\/output error|read-only file system/i.test(errorMessage(err));
}

/**
 * What a failure really was when the host is at fault: a database fault, or
 * a full state filesystem or pool behind an I/O error (a loop file's
 * filesystem filling shows up inside the volume as EIO, not ENOSPC). These
 * are environment errors, retried later, never "the image is bad".
 */
export async function asHostFault(
  ctx: Pick<JobContext, 'config' | 'objects'>,
  err: unknown,
): Promise<unknown> {
  const db = databaseError(err, ctx.config.stateDir);
  if (db !== undefined) return db;
  if (!isSpaceOrIoError(err)) return err;
  if (stateDirFull(ctx.config.stateDir)) {
    return new EnvironmentError(
      'STATE_FULL',
      `the filesystem of ${ctx.config.stateDir} is full: ${errorMessage(err)}`,
      `free space there (\`thinrelay gc\` releases failed leftovers), or move --state-dir; the image is retried`,
      { cause: err },
    );
  }
  const pool = await ctx.objects.backend.poolStatus().catch(() => undefined);
  if (pool !== undefined && pool.exists && pool.freeBytes <= 0) {
    return new EnvironmentError(
      'LOW_SPACE',
      `the pool ${pool.location} is out of space: ${errorMessage(err)}`,
      '`thinrelay gc` releases failed leftovers; grow the pool, or lower THINRELAY_RESERVE_BYTES',
      { cause: err },
    );
  }
  return err;
}

const spaceCodes = ['LOW_SPACE', 'STATE_FULL'] as const;

/**
 * A space fault is the host's and is retried, but not forever: once this
 * image has failed for want of space `config.spaceAttempts` times on this
 * host, it is recorded failed with that reason (fleet status shows it,
 * fleet wait ends) instead of retried without end. Space that comes back
 * later brings it back (catch-up sync, process-image).
 */
export function spendSpaceBudget(
  ctx: Pick<JobContext, 'config' | 'store' | 'image'>,
  err: unknown,
): unknown {
  if (!(err instanceof EnvironmentError) || err instanceof SpaceExhaustedError) return err;
  if (!(spaceCodes as readonly string[]).includes(err.code)) return err;
  const attempt = ctx.store.jobs.failedWithCodes(ctx.image.id, spaceCodes) + 1;
  const budget = ctx.config.spaceAttempts;
  if (attempt < budget) return err;
  return new SpaceExhaustedError(
    err.code as (typeof spaceCodes)[number],
    `${err.message} (attempt ${attempt}, retry budget ${budget}: recorded failed)`,
    'free space (`thinrelay gc`, grow the pool), then `thinrelay process-image` the key; catch-up sync also retries it',
    { cause: err },
  );
}

/**
 * A flat tar whose signature check failed keeps its unpacked volume, flushed
 * with its content's sha256 and never sealed: a re-sign (a new sidecar)
 * checks the signature against that sha256 and seals it, without fetching
 * the object again (pipeline/signature-wake.ts). The image holds it until
 * then; gc, an eviction pass or `remove` release it (pool/release.ts).
 */
function holdsForSignature(err: unknown): boolean {
  return err instanceof ImageError && err.code.startsWith('SIGNATURE_');
}

/**
 * Release what a failed job created: its snapshots, and its volumes unless
 * they hold a ready layer another image uses (shared content), are held for
 * a new signature (holdsForSignature: detached, kept) — or are kept for
 * inspection. Layers this job made ready that no other image uses go
 * too: a failed image leaves the pool as it was (a crash, which runs no
 * release, keeps them for the resumed job). A release that itself fails
 * leaves the object in `removing` for the next reconcile, and is logged,
 * never hidden.
 */
export async function releaseFailedJob(ctx: JobContext, err: unknown): Promise<void> {
  const { store, objects, job, image } = ctx;
  for (const row of [...store.objects.forJob(job.id)].reverse()) {
    if (row.state === 'removed') continue;
    const blob = row.kind === 'volume' ? store.blobs.byVolume(row.id) : undefined;
    const layerReady = blob?.status === 'ready';
    if (layerReady && releaseBlobIfUnused(ctx, blob.id, image.id) === undefined) continue;
    try {
      if (
        holdsForSignature(err) &&
        row.state === 'unpacked' &&
        blob?.status === 'unpacking' &&
        blob.sha256 !== null
      ) {
        await objects.detachUnpacked(row);
        ctx.logger.info('unpacked volume held for a new signature (not sealed)', {
          object: row.id,
          blob: blob.id,
          sha256: blob.sha256,
        });
        continue;
      }
      // A ready layer is good content, not the failure: nothing there to inspect.
      if (row.kind === 'volume' && ctx.keepOnFailure && row.state !== 'kept' && !layerReady)
        await objects.keep(row);
      else if (row.state !== 'kept') await objects.remove(row);
      if (blob !== undefined && blob.status === 'unpacking')
        store.blobs.setStatus(blob.id, 'failed');
    } catch (releaseErr) {
      ctx.logger.error("could not release a failed job's storage; reconcile will retry", {
        job: job.id,
        object: row.id,
        error: errorMessage(releaseErr),
      });
    }
  }
}
