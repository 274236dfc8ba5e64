/**
 * Catch-up sync: the bucket is the desired state. One round lists the
 * deployment's images prefix (ListObjectsV2, paginated), keeps the keys
 * routed to this host's group, and converges the host on them:
 *
 * - a key not held at its current ETag is processed, through the same
 *   per-key lock and pipeline as queue events (so a sync racing an event
 *   does the work once; a version already done is not redone, and one that
 *   failed permanently at that ETag is not retried);
 * - a key the host holds but the bucket no longer has is retired as a delete
 *   event retires it, after a HEAD confirms it is gone (the listing may
 *   predate an upload);
 * - a signature sidecar (`<key>.sig`, `<key>.sigstore.json`) is never an
 *   image: it only marks its image as signed, and an image waiting for its
 *   signature whose sidecar is listed is woken as the sidecar's event would
 *   (pipeline/signature-wake.ts): a lost event costs one round, not the
 *   deadline. One still unsigned is left to wait until its deadline, then
 *   processed, which fails it SIGNATURE_MISSING. An image that failed its
 *   signature check is evaluated again when the sidecar listed is not the
 *   one it was checked against (its key or ETag differs: a re-sign whose
 *   event was lost).
 *
 * Keys of other groups are left alone. At most `concurrency` keys at once.
 */
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { isKeyForGroup, type DeploymentConfigItem } from '../../../../schema/fleet.js';
import { sidecarTarget } from '../../../../schema/sidecar-key.js';
import { classifyFailure, failureCode, isPermanentFailureCode } from '../../pipeline/failure.js';
import { imageLockKey, type KeyLock } from '../../daemon/key-lock.js';
import { errorMessage, ImageError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { retireKey } from '../../ops/retire.js';
import { unpackedEstimate } from '../../config.js';
import { roomWithoutEvicting } from '../../pool/keeper.js';
import type { PipelineDeps } from '../../pipeline/context.js';
import { processImage } from '../../pipeline/process-image.js';
import {
  awaitsSignature,
  resignedSince,
  wakeAwaitingSignature,
} from '../../pipeline/signature-wake.js';
import type { SidecarSeen } from '../../trust/gate.js';
import { noProgress } from '../../pipeline/progress.js';
import { headObject } from '../../source/head.js';
import type { StateStore } from '../../store/index.js';
import { registerWorker, releaseWorker } from '../../store/owner.js';
import type { FleetMetrics } from './fleet-metrics.js';
import type { ImageReporter } from './image-reporter.js';

export interface ListedObject {
  eTag: string;
  size: number;
}

export interface BucketListing {
  /** Every key under the images prefix (present in the bucket). */
  present: Set<string>;
  /** The image keys routed to this group, with their current ETag (never a sidecar). */
  wanted: Map<string, ListedObject>;
  /** Image keys routed to this group that have a signature sidecar listed: those sidecars. */
  signed: Map<string, SidecarSeen[]>;
  requests: number;
}

export async function listGroupKeys(
  s3: S3Client,
  deployment: DeploymentConfigItem,
  group: string,
  signal?: AbortSignal,
): Promise<BucketListing> {
  const out: BucketListing = {
    present: new Set(),
    wanted: new Map(),
    signed: new Map(),
    requests: 0,
  };
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({
        Bucket: deployment.bucket,
        Prefix: deployment.imagesPrefix,
        ContinuationToken: token,
      }),
      { abortSignal: signal },
    );
    out.requests++;
    for (const o of page.Contents ?? []) {
      if (o.Key === undefined) continue;
      out.present.add(o.Key);
      const sidecar = sidecarTarget(o.Key);
      if (sidecar !== null) {
        if (isKeyForGroup(sidecar.imageKey, deployment, group))
          out.signed.set(sidecar.imageKey, [
            ...(out.signed.get(sidecar.imageKey) ?? []),
            { key: o.Key, eTag: o.ETag ?? null },
          ]);
        continue;
      }
      if (o.ETag !== undefined && isKeyForGroup(o.Key, deployment, group))
        out.wanted.set(o.Key, { eTag: o.ETag, size: o.Size ?? 0 });
    }
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return out;
}

export interface SyncPlan {
  /** `evicted`: this version was here and was evicted for space; it comes back only if it fits. */
  process: { key: string; eTag: string; size: number; evicted: boolean }[];
  retire: string[];
  /** Waiting for a signature whose sidecar is listed now: woken (its event may be lost). */
  wake: string[];
  /** Waiting for a signature with none listed yet: left to wait (its deadline is the gate's). */
  awaiting: number;
  /** Held at the listed ETag (ready, or failed for good). */
  upToDate: number;
}

/** What the host must do to match the listing (pure: reads the store only). */
export function planSync(
  store: StateStore,
  deployment: DeploymentConfigItem,
  listing: BucketListing,
  now = Date.now(),
): SyncPlan {
  const plan: SyncPlan = { process: [], retire: [], wake: [], awaiting: 0, upToDate: 0 };
  for (const [key, o] of listing.wanted) {
    const image = store.images.find(deployment.bucket, key, o.eTag);
    const deadlinePassed =
      image?.signature_deadline != null && Date.parse(image.signature_deadline) <= now;
    if (image !== undefined && awaitsSignature(image) && !deadlinePassed) {
      if (listing.signed.has(key)) plan.wake.push(key);
      else plan.awaiting++;
    } else if (image !== undefined && resignedSince(image, listing.signed.get(key) ?? [])) {
      plan.wake.push(key);
    } else if (
      image?.status === 'ready' ||
      (image?.status === 'failed' && isPermanentFailureCode(image.error_code)) ||
      // Retention dropped it for newer versions: never brought back.
      (image?.status === 'removed' && image.removed_reason === 'superseded')
    )
      plan.upToDate++;
    else
      plan.process.push({
        key,
        eTag: o.eTag,
        size: o.size,
        evicted: image?.status === 'removed' && image.removed_reason === 'evicted',
      });
  }
  const held = new Set(
    store.images
      .list()
      .filter((i) => i.bucket === deployment.bucket && i.key.startsWith(deployment.imagesPrefix))
      .map((i) => i.key),
  );
  for (const key of held) if (!listing.present.has(key)) plan.retire.push(key);
  return plan;
}

export interface SyncContext {
  deps: PipelineDeps;
  keyLock: KeyLock;
  reporter: ImageReporter;
  metrics: FleetMetrics;
  logger: Logger;
  concurrency: number;
  /** Aborted when the agent stops for good: running images are interrupted. */
  signal: AbortSignal;
  /** True once the agent is stopping: no new keys are started. */
  stopping: () => boolean;
}

export interface SyncRoundResult {
  keys: number;
  listed: number;
  /** S3 requests: list pages + HEADs before retiring. */
  requests: number;
  listRequests: number;
  upToDate: number;
  processed: number;
  retired: number;
  /** Images waiting for a signature, woken because their sidecar is listed. */
  woken: number;
  /** Images still waiting for a signature (none listed). */
  awaiting: number;
  failed: number;
  /** Changed or deleted meanwhile, or transient: the next round (or its event) covers it. */
  deferred: number;
  durationMs: number;
}

type KeyResult = 'processed' | 'retired' | 'woken' | 'failed' | 'deferred' | 'unchanged';

let taskSeq = 0;

export async function runSyncRound(
  ctx: SyncContext,
  deployment: DeploymentConfigItem,
  group: string,
): Promise<SyncRoundResult> {
  const started = Date.now();
  const s3 = await ctx.deps.s3();
  const listing = await listGroupKeys(s3, deployment, group, ctx.signal);
  ctx.metrics.syncRequests.inc({}, listing.requests);
  const plan = planSync(ctx.deps.store, deployment, listing);
  const result: SyncRoundResult = {
    keys: listing.wanted.size,
    listed: listing.present.size,
    requests: listing.requests,
    listRequests: listing.requests,
    upToDate: plan.upToDate,
    processed: 0,
    retired: 0,
    woken: 0,
    awaiting: plan.awaiting,
    failed: 0,
    deferred: 0,
    durationMs: 0,
  };
  const tasks: (() => Promise<KeyResult>)[] = [
    ...plan.retire.map((key) => () => retireGone(ctx, deployment.bucket, key, result)),
    ...plan.process.map((p) => () => processWanted(ctx, deployment.bucket, p)),
    ...plan.wake.map((key) => () => wakeSigned(ctx, deployment.bucket, key)),
  ];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length && !ctx.stopping()) {
      const r = await tasks[next++]!();
      if (r === 'unchanged') continue;
      ctx.metrics.syncActions.inc({ action: r });
      result[r]++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(ctx.concurrency, tasks.length) }, worker));
  result.durationMs = Date.now() - started;
  return result;
}

/**
 * Runs one key's work as a worker of its own: its own owner (reconcile and
 * job claims tell siblings apart; a registered worker reads as alive while
 * it runs) and logger.
 */
async function asWorker<T>(
  ctx: SyncContext,
  key: string,
  fn: (deps: PipelineDeps) => Promise<T>,
): Promise<T> {
  const deps: PipelineDeps = {
    ...ctx.deps,
    owner: `${ctx.deps.owner}:sync${++taskSeq}`,
    logger: ctx.logger.child({ sync: true, key }),
    progress: noProgress,
    signal: ctx.signal,
  };
  registerWorker(deps.owner);
  try {
    return await fn(deps);
  } finally {
    releaseWorker(deps.owner);
  }
}

async function processWanted(
  ctx: SyncContext,
  bucket: string,
  want: SyncPlan['process'][number],
): Promise<KeyResult> {
  const { key, eTag } = want;
  return ctx.keyLock.run(imageLockKey(bucket, key), async (): Promise<KeyResult> => {
    if (ctx.stopping()) return 'unchanged';
    // An event may have done it while this waited for the lock.
    if (ctx.deps.store.images.find(bucket, key, eTag)?.status === 'ready') return 'unchanged';
    if (want.evicted && !(await roomFor(ctx, want.size))) {
      ctx.logger.info(
        'sync: an evicted current version stays out: no room below the low watermark',
        {
          key,
          eTag,
          sizeBytes: want.size,
        },
      );
      return 'deferred';
    }
    return asWorker(ctx, key, (deps) => processWith(ctx, deps, bucket, key, eTag));
  });
}

/**
 * An evicted version comes back only if it fits below the low watermark
 * without evicting anything: two images never push each other out in turn.
 */
async function roomFor(ctx: SyncContext, objectBytes: number): Promise<boolean> {
  const { deps } = ctx;
  // Its format is not known before it is read again: counted as if compressed.
  const need = unpackedEstimate(objectBytes, deps.config, { uncompressedTar: false });
  return roomWithoutEvicting(deps, need);
}

async function processWith(
  ctx: SyncContext,
  deps: PipelineDeps,
  bucket: string,
  key: string,
  eTag: string,
): Promise<KeyResult> {
  ctx.reporter.working(bucket, key, eTag, null);
  try {
    const r = await processImage(deps, { bucket, key, eTag }, { reconcile: false });
    ctx.reporter.settled(bucket, key);
    if (r.outcome === 'already-complete') return 'unchanged';
    deps.logger.info('sync: image ready', { eTag, outcome: r.outcome });
    return 'processed';
  } catch (err) {
    const kind = classifyFailure(err, ctx.signal);
    const code = failureCode(err);
    if (kind === 'permanent') {
      ctx.reporter.settled(bucket, key);
      deps.logger.error('sync: image failed', { eTag, code, error: errorMessage(err) });
      return 'failed';
    }
    if (kind === 'awaiting') {
      // Held back for its signature (the row says until when): a listed sidecar wakes it.
      ctx.reporter.settled(bucket, key);
      deps.logger.info('sync: image awaits its signature', { eTag, error: errorMessage(err) });
      return 'unchanged';
    }
    if (kind === 'superseded') {
      // Overwritten or deleted since the listing: its event or the next round handles it.
      ctx.reporter.settled(bucket, key);
    } else {
      ctx.reporter.waiting(bucket, key, eTag, code, errorMessage(err));
    }
    deps.logger.warn('sync: image deferred to the next round', {
      eTag,
      class: kind,
      code,
      error: errorMessage(err),
    });
    return 'deferred';
  }
}

/** A waiting image whose sidecar is listed: woken under its key's lock, as its event would. */
async function wakeSigned(ctx: SyncContext, bucket: string, key: string): Promise<KeyResult> {
  return ctx.keyLock.run(imageLockKey(bucket, key), async (): Promise<KeyResult> => {
    if (ctx.stopping()) return 'unchanged';
    return asWorker(ctx, key, async (deps) => {
      try {
        const { imageIds } = await wakeAwaitingSignature(deps, bucket, key);
        ctx.reporter.settled(bucket, key);
        if (imageIds.length === 0) return 'unchanged';
        deps.logger.info('sync: signature listed: waiting image woken and ready', { imageIds });
        return 'woken';
      } catch (err) {
        const kind = classifyFailure(err, ctx.signal);
        const code = failureCode(err);
        if (kind === 'permanent' || kind === 'awaiting' || kind === 'superseded')
          ctx.reporter.settled(bucket, key);
        if (kind === 'permanent') {
          deps.logger.error('sync: signed image failed', { code, error: errorMessage(err) });
          return 'failed';
        }
        deps.logger.warn('sync: waking a signed image deferred to the next round', {
          class: kind,
          code,
          error: errorMessage(err),
        });
        return 'deferred';
      }
    });
  });
}

async function retireGone(
  ctx: SyncContext,
  bucket: string,
  key: string,
  result: SyncRoundResult,
): Promise<KeyResult> {
  return ctx.keyLock.run(imageLockKey(bucket, key), async (): Promise<KeyResult> => {
    if (ctx.stopping()) return 'unchanged';
    if (ctx.deps.store.images.liveByKey(bucket, key).length === 0) return 'unchanged';
    return asWorker(ctx, key, (deps) => retireWith(ctx, deps, bucket, key, result));
  });
}

async function retireWith(
  ctx: SyncContext,
  deps: PipelineDeps,
  bucket: string,
  key: string,
  result: SyncRoundResult,
): Promise<KeyResult> {
  try {
    result.requests++;
    await headObject(await deps.s3(), bucket, key, {
      maxBlobBytes: Number.MAX_SAFE_INTEGER,
      signal: ctx.signal,
    });
    // Uploaded after the listing: not gone.
    return 'unchanged';
  } catch (err) {
    if (!(err instanceof ImageError) || err.code !== 'OBJECT_NOT_FOUND') {
      deps.logger.warn('sync: could not confirm the key is gone; retiring later', {
        error: errorMessage(err),
      });
      return 'deferred';
    }
  }
  try {
    const retired = await retireKey(deps, bucket, key);
    ctx.reporter.settled(bucket, key);
    deps.logger.info('sync: key gone from the bucket: retired', {
      images: retired.imageIds,
      keptActiveSnapshots: retired.keptActiveSnapshots,
    });
    return 'retired';
  } catch (err) {
    deps.logger.warn('sync: retire failed; retrying next round', { error: errorMessage(err) });
    return 'deferred';
  }
}
