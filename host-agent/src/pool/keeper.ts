/**
 * The pool keeper: retention of versions, eviction by watermarks, admission
 * that evicts before it refuses. One pass at a time per process (the agent's
 * workers and its timer share it); across processes the store's
 * transactions keep each release whole (pool/release.ts).
 *
 * A pass: measure; collect what removed images left; if data use is above
 * the high watermark (or metadata above its own), or an image being admitted
 * does not fit, release the volumes failed images hold for a new signature,
 * then evict images in eviction order (holders.ts), measuring after
 * each, until use is below the low watermark (and the image fits).
 * Decisions read the pool's status each time, never an event: dm-thin
 * signals its low-water mark once, and a pass must not depend on seeing it.
 */
import { EnvironmentError, errorMessage } from '../errors.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { ImageRow } from '../store/images.js';
import type { RemovedReason } from '../store/states.js';
import { evictionOrder, holdings, summarize, type Holding, type HolderSummary } from './holders.js';
import type { PoolPolicy } from './policy.js';
import { collectReleased, releaseHeldForSignature, releaseImage } from './release.js';
import { describeUsage, usageOf, type PoolUsage } from './usage.js';

/** Told of every removal by policy and every pass (the agent: metrics, log, fleet items). */
export interface PoolEvents {
  removed(r: PolicyRemoval): void;
  pass(r: PassResult): void;
}

export interface PolicyRemoval {
  image: ImageRow;
  reason: Extract<RemovedReason, 'superseded' | 'evicted'>;
  /** Measured: pool use before minus after (0 while a snapshot of it stays in use). */
  freedBytes: number;
  /** What started the eviction pass; null for retention. */
  trigger: PassTrigger | null;
  detail: Record<string, unknown>;
}

export type PassTrigger = 'timer' | 'admission' | 'image' | 'operator' | 'start' | 'pool-event';

export interface PassResult {
  trigger: PassTrigger;
  before: PoolUsage;
  after: PoolUsage;
  evicted: PolicyRemoval[];
  /** Objects collected that removed images left. */
  collected: number;
  /**
   * What holds the space. Null for an admission pass that found room: the
   * per-image look (the kernel's in-use state of every device) is needed only
   * to choose what to evict, and admission runs before every download.
   */
  holders: HolderSummary | null;
  /** Why the pool cannot get below its high watermark, if it cannot. */
  degraded: string | null;
  durationMs: number;
  policy: PoolPolicy;
}

type KeeperDeps = Pick<PipelineDeps, 'store' | 'objects' | 'config' | 'logger'> & {
  poolEvents?: PoolEvents | undefined;
};

/** One pass at a time per state dir in this process. */
const queues = new Map<string, Promise<unknown>>();

function serialized<T>(stateDir: string, fn: () => Promise<T>): Promise<T> {
  const prev = queues.get(stateDir) ?? Promise.resolve();
  const run = prev.then(fn, fn);
  queues.set(
    stateDir,
    run.catch(() => undefined),
  );
  return run;
}

async function measure(deps: KeeperDeps): Promise<PoolUsage> {
  return usageOf(await deps.objects.backend.poolStatus(), deps.config);
}

function over(u: PoolUsage, p: PoolPolicy, needBytes: number | undefined): boolean {
  return (
    u.dataPercent > p.dataHighPercent ||
    (u.metadataPercent ?? 0) > p.metadataHighPercent ||
    (needBytes !== undefined && !fits(u, needBytes, p.dataHighPercent))
  );
}

/**
 * Where a pass stops. Over a watermark, it evicts down to the low one (the
 * gap keeps passes rare). For an image being admitted, only until the image
 * fits below the high one: its size is an estimate (a flat tar is counted at
 * up to 4 × its bytes), and retention retires the key's older version once
 * the new one is ready; the next timer pass brings use down to the low one.
 */
function below(u: PoolUsage, p: PoolPolicy, needBytes: number | undefined): boolean {
  if (needBytes !== undefined)
    return (
      fits(u, needBytes, p.dataHighPercent) && (u.metadataPercent ?? 0) <= p.metadataHighPercent
    );
  return u.dataPercent <= p.dataLowPercent && (u.metadataPercent ?? 0) <= p.metadataLowPercent;
}

/** The image's bytes fit: free space for them, and use stays at or under `percent`. */
function fits(u: PoolUsage, needBytes: number, percent: number): boolean {
  return u.freeBytes >= needBytes && u.usedBytes + needBytes <= (percent / 100) * u.capacityBytes;
}

/** One eviction pass (see the file's comment). */
export function evictionPass(
  deps: KeeperDeps,
  opts: { trigger: PassTrigger; needBytes?: number },
): Promise<PassResult> {
  return serialized(deps.config.stateDir, () => passLocked(deps, opts));
}

async function passLocked(
  deps: KeeperDeps,
  opts: { trigger: PassTrigger; needBytes?: number },
): Promise<PassResult> {
  const started = Date.now();
  const policy = deps.config.pool;
  const before = await measure(deps);
  let collected = (await collectReleased(deps)).length;
  let usage = collected > 0 ? await measure(deps) : before;
  const evicted: PolicyRemoval[] = [];
  let overAtStart = policy.enabled && over(usage, policy, opts.needBytes);
  if (overAtStart) {
    // Failed images' volumes held for a new signature go before any image is evicted.
    const dropped = (await releaseHeldForSignature(deps)).length;
    if (dropped > 0) {
      collected += dropped;
      usage = await measure(deps);
      overAtStart = over(usage, policy, opts.needBytes);
    }
  }
  let all = overAtStart || opts.trigger !== 'admission' ? holdings(deps, policy) : null;
  if (overAtStart && all !== null) {
    const trigger = describeUsage(usage);
    for (const candidate of evictionOrder(all)) {
      if (below(usage, policy, opts.needBytes)) break;
      const removal = await evict(deps, candidate, usage, {
        trigger: opts.trigger,
        usage: trigger,
        needBytes: opts.needBytes ?? null,
        highWatermarkPercent: policy.dataHighPercent,
        lowWatermarkPercent: policy.dataLowPercent,
        metadataHighWatermarkPercent: policy.metadataHighPercent,
      });
      if (removal === null) continue;
      usage = removal.after;
      evicted.push(removal.removal);
    }
    if (evicted.length > 0) all = holdings(deps, policy);
  }
  const holders = all === null ? null : summarize(deps, all);
  const result: PassResult = {
    trigger: opts.trigger,
    before,
    after: usage,
    evicted,
    collected,
    holders,
    degraded: all === null || holders === null ? null : degradedReason(usage, policy, all, holders),
    durationMs: Date.now() - started,
    policy,
  };
  deps.logger.info('eviction pass', {
    trigger: opts.trigger,
    durationMs: result.durationMs,
    evicted: evicted.length,
    collected,
    before: describeUsage(before),
    after: describeUsage(usage),
    ...(result.degraded === null ? {} : { degraded: result.degraded }),
  });
  if (result.degraded !== null) deps.logger.warn('pool degraded', { reason: result.degraded });
  deps.poolEvents?.pass(result);
  return result;
}

async function evict(
  deps: KeeperDeps,
  candidate: Holding,
  usage: PoolUsage,
  detail: Record<string, unknown>,
): Promise<{ removal: PolicyRemoval; after: PoolUsage } | null> {
  const { image } = candidate;
  let released;
  try {
    released = await releaseImage(deps, image.id, {
      reason: 'evicted',
      detail,
      snapshots: 'keep-in-use',
    });
  } catch (err) {
    // Recorded removed, storage partly released: collectReleased finishes it on the next pass.
    deps.logger.error('eviction could not release everything; the next pass finishes it', {
      image: image.id,
      key: image.key,
      error: errorMessage(err),
    });
    return null;
  }
  if (!released.released) {
    deps.logger.info('eviction skipped an image', {
      image: image.id,
      key: image.key,
      why: released.why,
    });
    return null;
  }
  const after = await measure(deps);
  const removal: PolicyRemoval = {
    image: deps.store.images.get(image.id)!,
    reason: 'evicted',
    freedBytes: Math.max(0, usage.usedBytes - after.usedBytes),
    trigger: detail.trigger as PassTrigger,
    detail,
  };
  deps.logger.info('image evicted', {
    image: image.id,
    key: image.key,
    eTag: image.etag,
    current: candidate.hold === 'current',
    lastUsed: candidate.lastUseAt,
    freedBytes: removal.freedBytes,
    usage: describeUsage(after),
  });
  deps.poolEvents?.removed(removal);
  return { removal, after };
}

/** Why the pool stays above its high watermark with nothing left to evict, or null. */
function degradedReason(
  u: PoolUsage,
  p: PoolPolicy,
  all: readonly Holding[],
  h: HolderSummary,
): string | null {
  if (!p.enabled) return null;
  const dataOver = u.dataPercent > p.dataHighPercent;
  const metaOver = (u.metadataPercent ?? 0) > p.metadataHighPercent;
  if (!dataOver && !metaOver) return null;
  if (evictionOrder(all).length > 0) return null;
  const what = dataOver
    ? `data ${u.dataPercent.toFixed(1)}% is over the high watermark ${p.dataHighPercent}%`
    : `metadata ${u.metadataPercent!.toFixed(1)}% is over the high watermark ${p.metadataHighPercent}%`;
  return `${what} and nothing is left to evict: ${holdersText(h)}`;
}

/** "2 pinned (40 MiB), 1 in use (20 MiB)…": what holds the space, for operators. */
export function holdersText(h: HolderSummary): string {
  const parts: string[] = [];
  const add = (n: number, what: string, bytes: number): void => {
    if (n > 0) parts.push(`${n} ${what} (${bytes} bytes)`);
  };
  add(h.images.pinned, 'pinned image(s)', h.pinnedBytes);
  add(h.images['in-use'], 'image(s) in use', h.inUseBytes);
  add(h.images.busy, 'image(s) being processed or activated', h.busyBytes);
  add(h.images.current, 'current version(s)', h.currentBytes);
  add(h.images.failed, 'failed image(s) holding layers a retry reuses', h.failedBytes);
  add(h.images.evictable, 'older version(s)', h.evictableBytes);
  return parts.length === 0
    ? 'no image holds it (other files on the filesystem?)'
    : parts.join(', ');
}

/**
 * Before a download: room for `needBytes`, evicting by the policy if the
 * pool lacks it; LOW_SPACE naming what holds the space when even that
 * cannot free enough. The backend's own floors are checked last.
 */
export async function admit(deps: KeeperDeps, needBytes: number, what: string): Promise<void> {
  if (deps.config.pool.enabled) {
    const r = await evictionPass(deps, { trigger: 'admission', needBytes });
    if (r.after.freeBytes < needBytes) {
      throw new EnvironmentError(
        'LOW_SPACE',
        `the pool cannot take ${what}: it needs up to ${needBytes} bytes and has ${r.after.freeBytes} free ` +
          `after evicting what the policy allows (${describeUsage(r.after)}); the space is held by ${r.holders === null ? 'nothing it may evict' : holdersText(r.holders)}`,
        'unpin images (thinrelay unpin), release devices in use, lower THINRELAY_RETAIN_VERSIONS, or grow the pool',
      );
    }
  }
  await deps.objects.backend.ensureSpace(needBytes);
}

/**
 * Whether an evicted current version may come back (catch-up sync): only
 * when it fits below the low watermark as the pool is, evicting nothing — so
 * two images never push each other out in turn.
 */
export async function roomWithoutEvicting(deps: KeeperDeps, needBytes: number): Promise<boolean> {
  const u = await measure(deps);
  return fits(u, needBytes, deps.config.pool.dataLowPercent);
}

/** The pool as a pass sees it, without changing anything (pool status, healthz). */
export async function assessPool(
  deps: Pick<PipelineDeps, 'store' | 'objects' | 'config'>,
): Promise<{ usage: PoolUsage; holders: HolderSummary; degraded: string | null }> {
  const usage = await measure(deps as KeeperDeps);
  // Read-only: a status never writes (the database may be open read-only).
  const all = holdings(deps, deps.config.pool, { recordUse: false });
  const holders = summarize(deps, all);
  return { usage, holders, degraded: degradedReason(usage, deps.config.pool, all, holders) };
}

/**
 * Retention: the key of `image` keeps its newest `retainVersions` ready
 * versions; every older version (ready or failed) not pinned by itself is
 * retired as superseded, its snapshots in use kept until released.
 */
export async function applyRetention(deps: KeeperDeps, image: ImageRow): Promise<PolicyRemoval[]> {
  const policy = deps.config.pool;
  if (!policy.enabled) return [];
  return serialized(deps.config.stateDir, async () => {
    const { store } = deps;
    const live = store.images.liveByKey(image.bucket, image.key);
    const ready = live.filter((i) => i.status === 'ready').sort((a, b) => b.id - a.id);
    const kept = ready.slice(0, policy.retainVersions);
    if (kept.length < policy.retainVersions) return [];
    const oldestKept = kept.at(-1)!.id;
    const out: PolicyRemoval[] = [];
    for (const old of live.filter((i) => i.id < oldestKept)) {
      if (old.pinned === 1 || (old.status !== 'ready' && old.status !== 'failed')) continue;
      const detail = {
        retainVersions: policy.retainVersions,
        newerVersions: kept.map((k) => ({ image: k.id, eTag: k.etag })),
      };
      const before = await measure(deps);
      const released = await releaseImage(deps, old.id, {
        reason: 'superseded',
        detail,
        snapshots: 'keep-in-use',
      });
      if (!released.released) continue;
      const after = await measure(deps);
      const removal: PolicyRemoval = {
        image: store.images.get(old.id)!,
        reason: 'superseded',
        freedBytes: Math.max(0, before.usedBytes - after.usedBytes),
        trigger: null,
        detail,
      };
      deps.logger.info('image superseded', {
        image: old.id,
        key: old.key,
        eTag: old.etag,
        keptVersions: kept.length,
        freedBytes: removal.freedBytes,
        ...(released.keptInUse.length > 0
          ? { inUseSnapshotsKept: released.keptInUse.map((s) => s.device_path) }
          : {}),
      });
      deps.poolEvents?.removed(removal);
      out.push(removal);
    }
    return out;
  });
}
