/**
 * process-image: one S3 object → an activated snapshot, exactly once.
 *
 * 1. reconcile (crash recovery on every start);
 * 2. HEAD the object: its ETag (and version) pin the image;
 * 3. already done → make sure it is active, return (the fast path);
 * 4. claim the image's job — create it, take it over from a dead owner, or
 *    wait for a live one (concurrent runs join, never duplicate);
 * 5. run the remaining steps.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageError, errorMessage, type ImageFailureCode } from '../errors.js';
import { applyRetention } from '../pool/keeper.js';
import { sameETag } from '../../../schema/etag.js';
import type { ObjectRef } from '../source/object-ref.js';
import type { ImageRow } from '../store/images.js';
import type { JobRow } from '../store/jobs.js';
import { isOwnerAlive, ownerPid } from '../store/owner.js';
import type { PipelineDeps } from './context.js';
import { reconcile } from './reconcile.js';
import { imageStepNames, runJob } from './runner.js';
import { attachSnapshot } from './steps/activate.js';
import { snapshotImage } from './steps/snapshot.js';
import { jittered } from '../retry.js';
import { holdForSignature, type SidecarRead } from '../trust/gate.js';
import { refuseUntrusted } from '../trust/untrusted.js';

export interface ProcessRequest {
  bucket: string;
  key: string;
  versionId?: string | null;
  /**
   * The ETag the caller expects (an event carries it). When an image with
   * exactly this identity is already done, nothing is asked of S3 at all;
   * otherwise the object must still have this ETag.
   */
  eTag?: string | null;
}

export interface ProcessResult {
  /** complete: this run did the work; already-complete: nothing to do; joined: another process did it. */
  outcome: 'complete' | 'already-complete' | 'joined';
  image: ImageRow;
  jobId: number | null;
  devicePath: string;
  snapshotObjectId: number;
}

type Claim = { kind: 'mine'; job: JobRow; takeover: boolean } | { kind: 'wait'; job: JobRow };

export interface ProcessOptions {
  /**
   * Reconcile first (default). The daemon reconciles once at start instead:
   * its other jobs are live, so a per-image reconcile would find nothing but
   * cost an inventory of the host.
   */
  reconcile?: boolean;
}

export async function processImage(
  outer: PipelineDeps,
  req: ProcessRequest,
  opts: ProcessOptions = {},
): Promise<ProcessResult> {
  // Every line of this image's work carries its key, then its image and job ids.
  let deps = withLogFields(outer, { key: req.key });
  if (opts.reconcile !== false) await reconcile(deps);
  const known = req.eTag ? deps.store.images.find(req.bucket, req.key, req.eTag) : undefined;
  if (known?.status === 'ready') {
    return {
      outcome: 'already-complete',
      jobId: null,
      image: known,
      ...(await ensureActive(deps, known)),
    };
  }
  // The SDK loads only when S3 must be asked.
  const { headObject } = await import('../source/head.js');
  const ref = await headObject(await deps.s3(), req.bucket, req.key, {
    maxBlobBytes: deps.config.limits.maxBlobBytes,
    versionId: req.versionId ?? null,
    signal: deps.signal,
  });
  if (req.eTag && !sameETag(req.eTag, ref.eTag)) {
    throw new ImageError(
      'OBJECT_CHANGED',
      `s3://${req.bucket}/${req.key} now has ETag ${ref.eTag}, not the requested ${req.eTag}`,
      'process the current version (drop --etag), or re-upload the expected one',
    );
  }
  const image = deps.store.images.upsert(ref);
  deps = withLogFields(deps, { image: image.id });
  refuseUntrusted(image);
  if (image.status === 'ready') {
    return {
      outcome: 'already-complete',
      jobId: null,
      image,
      ...(await ensureActive(deps, image)),
    };
  }
  // No job yet: an image whose signature has not arrived waits without one (trust/gate.ts).
  const sidecar =
    deps.store.jobs.openForImage(image.id) === undefined
      ? await holdForSignature(deps, image, ref)
      : undefined;
  for (;;) {
    const claim = claimJob(deps, image);
    if (claim.kind === 'mine') return runClaimed(deps, claim, image, ref, sidecar);
    const finished = await waitForJob(deps, claim.job);
    if (finished.status === 'complete') {
      const done = deps.store.images.get(image.id)!;
      return {
        outcome: 'joined',
        jobId: finished.id,
        image: done,
        ...(await ensureActive(deps, done)),
      };
    }
    if (finished.status === 'failed') {
      throw new ImageError(
        (finished.error_code ?? 'STORAGE_FAILED') as ImageFailureCode,
        `${req.key}: job ${finished.id} (another process) failed: ${finished.error_message ?? 'no reason recorded'}`,
      );
    }
    // Its owner died while we waited: loop and take it over.
  }
}

async function runClaimed(
  deps: PipelineDeps,
  claim: { job: JobRow; takeover: boolean },
  image: ImageRow,
  ref: ObjectRef,
  sidecar: SidecarRead | undefined,
): Promise<ProcessResult> {
  if (claim.takeover) {
    deps.logger.warn('taking over an interrupted job', {
      job: claim.job.id,
      previousOwner: claim.job.owner,
    });
    await reconcile(deps);
  }
  const job = deps.store.jobs.get(claim.job.id)!;
  deps = withLogFields(deps, { job: job.id });
  await runJob({ ...deps, job, image: deps.store.images.get(image.id)!, ref, sidecar });
  const done = deps.store.images.get(image.id)!;
  await retainVersions(deps, done);
  return { outcome: 'complete', jobId: job.id, image: done, ...(await ensureActive(deps, done)) };
}

/**
 * A new version is ready: older versions of its key beyond the retention
 * count are retired. The image is done whatever happens here: a failure is
 * logged and the next version (or pool pass) retires them.
 */
async function retainVersions(deps: PipelineDeps, image: ImageRow): Promise<void> {
  try {
    await applyRetention(deps, image);
  } catch (err) {
    deps.logger.warn('retention of older versions failed; the next pool pass retries', {
      error: errorMessage(err),
    });
  }
}

/** Deps whose logger (and the object manager's) adds `fields` to every line. */
function withLogFields(deps: PipelineDeps, fields: Record<string, unknown>): PipelineDeps {
  const logger = deps.logger.child(fields);
  return { ...deps, logger, objects: deps.objects.withLogger(logger) };
}

function claimJob(deps: PipelineDeps, image: ImageRow): Claim {
  const { store, owner } = deps;
  return store.tx((): Claim => {
    const open = store.jobs.openForImage(image.id);
    if (open === undefined) {
      const job = store.jobs.create(image.id, owner, imageStepNames);
      // A flat tar held after a failed signature check: this job seals it (the unpack step).
      const adopted = store.objects.adoptHeld(image.id, job.id);
      if (adopted > 0) deps.logger.info('resuming from the volume held for a new signature');
      store.images.markProcessing(image.id);
      return { kind: 'mine', job, takeover: false };
    }
    if (open.owner === owner) return { kind: 'mine', job: open, takeover: false };
    if (isOwnerAlive(open.owner)) return { kind: 'wait', job: open };
    store.jobs.claim(open.id, open.owner, owner);
    return { kind: 'mine', job: open, takeover: true };
  });
}

/** Poll until the job ends or its owner dies. */
async function waitForJob(deps: PipelineDeps, job: JobRow): Promise<JobRow> {
  deps.logger.info('another process is working on this image: waiting for it', {
    job: job.id,
    pid: ownerPid(job.owner),
  });
  for (;;) {
    await sleep(jittered(200), undefined, { signal: deps.signal });
    const now = deps.store.jobs.get(job.id)!;
    if (now.status === 'complete' || now.status === 'failed') return now;
    if (!isOwnerAlive(now.owner)) return now;
  }
}

/**
 * A ready image has an active snapshot: the newest one if it is attached,
 * else an inactive one attached again, else a new one (the snapshot and
 * activate steps' own work, outside a job).
 */
async function ensureActive(
  deps: PipelineDeps,
  image: ImageRow,
): Promise<{ devicePath: string; snapshotObjectId: number }> {
  const { store } = deps;
  const active = store.snapshots.forImage(image.id)[0];
  if (active !== undefined)
    return { devicePath: active.device_path, snapshotObjectId: active.object_id };
  const snap =
    store.objects.snapshotsOfImage(image.id).find((s) => s.state === 'inactive') ??
    (await snapshotImage(deps, image, null));
  return attachSnapshot(deps, snap);
}
