/**
 * The agent daemon: long-polls this host's queue and runs up to
 * `concurrency` messages at once through the pipeline.
 *
 * - It polls again as soon as a slot is free, never waiting for a batch.
 * - Each message's handling returns one outcome; its MessageLease
 *   (message-outcome.ts) extends the message while it runs, then records the
 *   outcome and deletes the message or hands it back. The agent keeps the loop.
 * - Messages for one key run one at a time, in arrival order (KeyLock).
 * - Transient failures retry here a few times (holding the message, so the
 *   receive count — and the DLQ — are spared), then go back with a delay.
 * - stop(): no new receives; in-flight work gets `drainSeconds`, then is
 *   interrupted and its messages released at once. The pipeline records an
 *   interrupted job and releases its storage; a restart completes it.
 * - Each message runs as its own worker owner, alive only while it runs: a
 *   worker that could not record its outcome (a failed database write) left
 *   work that this agent reconciles itself, without a restart, and that the
 *   next event for the image takes over instead of waiting on.
 */
import { statfsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { sidecarTarget } from '../../../schema/sidecar-key.js';
import { backoffDelay, jittered } from '../retry.js';
import { errorMessage } from '../errors.js';
import { prepareVerifier } from '../trust/check-signature.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { ProgressSink } from '../pipeline/progress.js';
import { reconcile } from '../pipeline/reconcile.js';
import type { HostQueue, ReceivedMessage } from '../queue/host-queue.js';
import { registerWorker, releaseWorker } from '../store/owner.js';
import { applyMessage, notStarted } from './apply-event.js';
import { imageLockKey, KeyLock } from './key-lock.js';
import { MessageLease, type MessageResult } from './message-outcome.js';
import { AgentMetrics } from './metrics.js';
import {
  evictionPass,
  type PassResult,
  type PassTrigger,
  type PoolEvents,
} from '../pool/keeper.js';

export interface AgentOptions {
  queue: HostQueue;
  /** The process's runtime; each message gets its own owner and abort signal. */
  deps: PipelineDeps;
  concurrency: number;
  visibilitySeconds: number;
  waitSeconds: number;
  drainSeconds: number;
  /** In-process attempts for a transient failure before the message goes back. */
  transientAttempts: number;
  transientBaseDelayMs: number;
  /** Delay before SQS offers a transiently failed message again. */
  retryDelaySeconds: (receiveCount: number) => number;
  /** Called with each message's timings (benchmarks, tests). */
  onMessageDone?: (timing: MessageTiming) => void;
  /** Shared with whatever else works on keys (catch-up sync), so a key runs one job at a time. */
  keyLock?: KeyLock;
  /** Told when a message's work starts and after its outcome is recorded (the fleet table). */
  observer?: AgentObserver;
  /** Called once start-up recovery (reconcile) is done, before the first receive. */
  onReady?: () => void;
}

export interface AgentObserver {
  started(target: EventTarget): void;
  decided(result: MessageResult): void;
  /** The pool policy removed (retired or evicted) an image of this key. */
  removedByPolicy?(bucket: string, key: string): void;
}

/** What a message is about, read leniently before it is parsed for real. */
export interface EventTarget {
  kind: string | null;
  bucket: string;
  key: string;
  eTag: string | null;
  versionId: string | null;
}

export interface MessageTiming {
  messageId: string;
  outcome: MessageResult['outcome'];
  receivedAt: number;
  /** When the pipeline (or the decision) started. */
  startedAt: number;
  /** When the outcome was committed. */
  decidedAt: number;
  /** When the message was deleted or released. */
  settledAt: number;
}

/** Doubles from 15 s up to 15 min, each ±20 % so a fleet's retries spread out. */
export const defaultRetryDelaySeconds = (receiveCount: number): number =>
  Math.round(jittered(Math.min(900, 15 * 2 ** Math.max(0, receiveCount - 1))));

export class Agent {
  readonly metrics: AgentMetrics;
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly keyLock: KeyLock;
  private readonly pollAbort = new AbortController();
  /** Aborted when the drain deadline passes: in-flight pipelines stop. */
  private readonly workAbort = new AbortController();
  private stopping = false;
  private slotFreed: (() => void) | null = null;
  private workerSeq = 0;
  /** Work a finished worker left behind (it could not record its outcome): reconcile it. */
  private leftovers = false;
  private reconciling: Promise<void> | null = null;
  private lastPollOkAt = 0;
  private readonly startedAt = Date.now();

  /** The last pool pass (retention, eviction): its degraded reason feeds /healthz. */
  private lastPass: PassResult | null = null;
  /** A pass is queued or running: another request joins it. */
  private passPending: Promise<void> | null = null;

  constructor(private readonly opts: AgentOptions) {
    const { store, objects } = opts.deps;
    this.metrics = new AgentMetrics(() => this.inFlight.size, {
      imagesByStatus: () => store.images.countByStatus(),
      pool: () => objects.backend.poolStatus(),
    });
    this.keyLock = opts.keyLock ?? new KeyLock();
    // Every pipeline of this process (queue workers, catch-up sync) reports through the base deps.
    opts.deps.poolEvents = this.poolEvents();
    opts.deps.trustChecked = (r) =>
      this.metrics.signatureChecks.inc({
        mode: r.mode,
        verdict: r.verdict,
        code: r.failure?.code ?? '',
      });
  }

  private poolEvents(): PoolEvents {
    return {
      removed: (r) => {
        this.metrics.poolRetirements.inc({ reason: r.reason });
        if (r.reason === 'evicted')
          this.metrics.poolEvictions.inc({ trigger: r.trigger ?? 'unknown' });
        this.metrics.poolReclaimed.inc({}, r.freedBytes);
        try {
          this.opts.observer?.removedByPolicy?.(r.image.bucket, r.image.key);
        } catch (err) {
          this.opts.deps.logger.warn('could not report a removal', { error: errorMessage(err) });
        }
      },
      pass: (r) => {
        this.lastPass = r;
        if (r.holders !== null) this.metrics.poolPinned.set(r.holders.pinnedBytes);
        this.metrics.poolLastPass.set(Math.floor(Date.now() / 1000));
        this.metrics.poolPassDuration.observe(r.durationMs / 1000);
        this.metrics.poolDegraded.set(r.degraded === null ? 0 : 1);
      },
    };
  }

  /**
   * One pool pass; a request while one is queued joins it. Never throws: a
   * pass that fails is logged and the next one (timer, image) tries again.
   */
  private poolPass(trigger: PassTrigger): Promise<void> {
    if (this.passPending !== null) return this.passPending;
    const { deps } = this.opts;
    this.passPending = evictionPass(deps, { trigger })
      .then(() => undefined)
      .catch((err: unknown) => {
        deps.logger.warn('pool pass failed; the next one retries', { error: errorMessage(err) });
      })
      .finally(() => (this.passPending = null));
    return this.passPending;
  }

  /**
   * Thin pools: a pass whenever the pool raises an event (its low-water mark
   * crossed, out of space). Only a wake-up: the timer covers what it misses.
   */
  private async poolEventLoop(): Promise<void> {
    const { objects, logger } = this.opts.deps;
    const wait = objects.backend.waitForPoolEvent?.bind(objects.backend);
    if (wait === undefined) return;
    let failures = 0;
    while (!this.stopping) {
      try {
        const event = await wait({ signal: this.pollAbort.signal, timeoutMs: 600_000 });
        failures = 0;
        if (!event || this.stopping) continue;
        logger.info('thin pool event: pool pass', {});
        await this.poolPass('pool-event');
      } catch (err) {
        if (this.stopping) return;
        failures++;
        // No pool yet, or dmsetup failing: look again later (the timer still runs passes).
        if (failures === 1)
          logger.warn('cannot wait for thin pool events; retrying', { error: errorMessage(err) });
        try {
          await sleep(backoffDelay(5000, Math.min(failures, 6), 300_000), undefined, {
            signal: this.pollAbort.signal,
          });
        } catch {
          return;
        }
      }
    }
  }

  /** A pass every THINRELAY_POOL_CHECK_SECONDS until stop. */
  private async poolLoop(): Promise<void> {
    for (;;) {
      try {
        await sleep(this.opts.deps.config.pool.checkSeconds * 1000, undefined, {
          signal: this.pollAbort.signal,
        });
      } catch {
        return;
      }
      if (this.stopping) return;
      await this.poolPass('timer');
    }
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /**
   * Healthy: the poll loop ran recently (or the agent just started) and is
   * not stopping. Degraded: it runs, but this host cannot take images now
   * (its state filesystem is below the reserve); both answer 503.
   */
  health(): { healthy: boolean; status: string; detail: Record<string, unknown> } {
    const now = Date.now();
    const since = this.lastPollOkAt === 0 ? now - this.startedAt : now - this.lastPollOkAt;
    const limitMs = (this.opts.waitSeconds + 45) * 1000;
    const busy = this.inFlight.size >= this.opts.concurrency;
    const polling = !this.stopping && (busy || since < limitMs);
    const space = this.stateSpace();
    const poolDegraded = this.lastPass?.degraded ?? null;
    const healthy = polling && space.ok && poolDegraded === null;
    return {
      healthy,
      status: healthy ? 'ok' : polling ? 'degraded' : 'unhealthy',
      detail: {
        stopping: this.stopping,
        inFlight: this.inFlight.size,
        concurrency: this.opts.concurrency,
        lastPollOk: this.lastPollOkAt === 0 ? null : new Date(this.lastPollOkAt).toISOString(),
        queueUrl: this.opts.queue.url,
        stateFreeBytes: space.freeBytes,
        ...(space.ok ? {} : { degraded: space.reason }),
        ...(poolDegraded === null ? {} : { degraded: poolDegraded }),
      },
    };
  }

  /** Free space on the state filesystem against the reserve (and a floor for the database). */
  private stateSpace(): { ok: boolean; freeBytes: number | null; reason?: string } {
    const { stateDir, reserveBytes } = this.opts.deps.config;
    let free: number;
    try {
      const fs = statfsSync(stateDir);
      free = fs.bavail * fs.bsize;
    } catch (err) {
      return {
        ok: false,
        freeBytes: null,
        reason: `cannot read ${stateDir}: ${errorMessage(err)}`,
      };
    }
    const floor = Math.max(reserveBytes, minimumStateFreeBytes);
    return free >= floor
      ? { ok: true, freeBytes: free }
      : {
          ok: false,
          freeBytes: free,
          reason: `${free} bytes free on the filesystem of ${stateDir}, below ${floor}: images wait for space (thinrelay gc)`,
        };
  }

  /** Reconcile, then poll until stop(); resolves when every message is settled. */
  async run(): Promise<void> {
    const { deps } = this.opts;
    await reconcile(deps);
    await this.poolPass('start');
    const poolLoops = [this.poolLoop(), this.poolEventLoop()];
    this.opts.onReady?.();
    deps.logger.info('agent started', {
      queueUrl: this.opts.queue.url,
      concurrency: this.opts.concurrency,
      backend: deps.config.backend,
    });
    void prepareVerifier(deps.config.signatures, (message, err) =>
      deps.logger.warn(message, { error: errorMessage(err) }),
    );
    let failures = 0;
    while (!this.stopping) {
      await this.waitForSlot();
      if (this.stopping) break;
      if (this.leftovers) await this.reconcileLeftovers();
      let messages: ReceivedMessage[];
      try {
        messages = await this.opts.queue.receive({
          maxMessages: this.opts.concurrency - this.inFlight.size,
          waitSeconds: this.opts.waitSeconds,
          visibilitySeconds: this.opts.visibilitySeconds,
          signal: this.pollAbort.signal,
        });
        failures = 0;
        this.lastPollOkAt = Date.now();
        this.metrics.lastPoll.set(Math.floor(this.lastPollOkAt / 1000));
      } catch (err) {
        if (this.stopping) break;
        failures++;
        this.metrics.receiveErrors.inc();
        const delay = backoffDelay(1000, Math.min(failures, 6), 30_000);
        deps.logger.warn('receive failed; retrying', { error: errorMessage(err), delayMs: delay });
        await sleep(delay, undefined, { signal: this.pollAbort.signal }).catch(() => undefined);
        continue;
      }
      for (const m of messages) this.startMessage(m);
    }
    await this.drain();
    await Promise.all(poolLoops);
    await this.passPending;
    if (this.leftovers) await this.reconcileLeftovers();
    deps.logger.info('agent stopped', {});
  }

  /**
   * Stop receiving; in-flight work gets `drainSeconds` to finish. Resolves
   * immediately; run() resolves when all is settled.
   */
  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.opts.deps.logger.info('stopping: no new messages', {
      reason,
      inFlight: this.inFlight.size,
      drainSeconds: this.opts.drainSeconds,
    });
    this.pollAbort.abort(new Error(reason));
    this.slotFreed?.();
  }

  private async waitForSlot(): Promise<void> {
    while (!this.stopping && this.inFlight.size >= this.opts.concurrency) {
      await new Promise<void>((resolve) => (this.slotFreed = resolve));
    }
  }

  private async drain(): Promise<void> {
    if (this.inFlight.size === 0) return;
    const deadline = sleep(this.opts.drainSeconds * 1000, 'deadline' as const, { ref: false });
    const all = Promise.all(this.inFlight.values()).then(() => 'done' as const);
    if ((await Promise.race([all, deadline])) === 'deadline') {
      this.opts.deps.logger.warn('drain deadline passed: interrupting in-flight images', {
        inFlight: this.inFlight.size,
      });
      this.workAbort.abort(new Error('agent shutdown deadline'));
      await all;
    }
  }

  private startMessage(m: ReceivedMessage): void {
    this.metrics.receiveLag.observe(Math.max(0, m.receivedAt - m.sentAt) / 1000);
    const work = this.handle(m)
      .catch((err: unknown) => {
        // handle() settles its message itself; this is a bug, never hidden.
        this.opts.deps.logger.error('message handling failed unexpectedly', {
          messageId: m.messageId,
          error: errorMessage(err),
        });
      })
      .finally(() => {
        this.inFlight.delete(m.messageId);
        this.slotFreed?.();
      });
    this.inFlight.set(m.messageId, work);
  }

  private async handle(m: ReceivedMessage): Promise<void> {
    const { deps, queue } = this.opts;
    const target = targetOf(m.body);
    // Every line of this message's work names it and its key (the pipeline adds image and job).
    const logger = deps.logger.child({
      messageId: m.messageId,
      ...(target === null ? {} : { bucket: target.bucket, key: target.key }),
    });
    const lease = new MessageLease(m, {
      queue,
      visibilitySeconds: this.opts.visibilitySeconds,
      retryDelaySeconds: this.opts.retryDelaySeconds,
      store: deps.store,
      metrics: this.metrics,
      logger,
      recorded: this.opts.observer?.decided.bind(this.opts.observer),
    });
    lease.extend();
    let result: MessageResult;
    let startedAt = Date.now();
    try {
      // A sidecar's event waits behind the image it signs (the wake re-evaluates it).
      const lockName =
        target === null
          ? `body:${m.body.slice(0, 64)}`
          : imageLockKey(target.bucket, lockedKeyOf(target));
      result = await this.keyLock.run(lockName, async () => {
        startedAt = Date.now();
        // It waited behind its key's lock while a stop began: don't start it.
        if (this.stopping) return notStarted();
        if (target !== null) this.opts.observer?.started(target);
        return this.applyWithRetries(m, logger);
      });
    } finally {
      await lease.stopExtending();
    }
    const decidedAt = Date.now();
    const recorded = await lease.conclude(result);
    // A new image may have taken the pool over its high watermark: look now, not at the timer.
    if (recorded.outcome === 'applied' && !this.stopping) void this.poolPass('image');
    this.opts.onMessageDone?.({
      messageId: m.messageId,
      outcome: recorded.outcome,
      receivedAt: m.receivedAt,
      startedAt,
      decidedAt,
      settledAt: Date.now(),
    });
  }

  private async applyWithRetries(
    m: ReceivedMessage,
    logger: PipelineDeps['logger'],
  ): Promise<MessageResult> {
    const deps = this.depsFor(logger);
    registerWorker(deps.owner);
    try {
      return await this.applyAttempts(m, deps, logger);
    } finally {
      releaseWorker(deps.owner);
      this.checkLeftovers(deps.owner);
    }
  }

  private async applyAttempts(
    m: ReceivedMessage,
    deps: PipelineDeps,
    logger: PipelineDeps['logger'],
  ): Promise<MessageResult> {
    for (let attempt = 1; ; attempt++) {
      const result = await applyMessage(deps, m);
      if (result.outcome !== 'retrying' || attempt >= this.opts.transientAttempts || this.stopping)
        return result;
      const delayMs = backoffDelay(this.opts.transientBaseDelayMs, attempt);
      logger.warn('transient failure; retrying', {
        attempt,
        delayMs,
        code: result.reasonCode,
        error: result.reason,
      });
      try {
        await sleep(delayMs, undefined, { signal: this.workAbort.signal });
      } catch {
        return result;
      }
    }
  }

  /** Did this worker leave an open job or an intent behind? Then reconcile soon. */
  private checkLeftovers(owner: string): void {
    const { store, logger } = this.opts.deps;
    try {
      const left =
        store.jobs.listOpen().some((j) => j.owner === owner) ||
        store.objects.listLive().some((o) => o.owner === owner);
      if (left) {
        logger.warn('a worker left unfinished work; reconciling it', { owner });
        this.leftovers = true;
        this.slotFreed?.();
      }
    } catch (err) {
      // The database is what failed: assume the worst and reconcile once it answers.
      logger.warn('could not check a worker for leftovers; reconciling', {
        owner,
        error: errorMessage(err),
      });
      this.leftovers = true;
    }
  }

  /** Reconcile what ended workers left (one at a time); on failure, retried before the next poll. */
  private async reconcileLeftovers(): Promise<void> {
    this.reconciling ??= (async () => {
      this.leftovers = false;
      try {
        await reconcile(this.opts.deps);
      } catch (err) {
        this.leftovers = true;
        this.opts.deps.logger.warn('reconcile of leftovers failed; retrying before the next poll', {
          error: errorMessage(err),
        });
        await sleep(1000, undefined, { signal: this.pollAbort.signal }).catch(() => undefined);
      }
    })().finally(() => (this.reconciling = null));
    await this.reconciling;
  }

  /** Per message: its own owner (so reconcile never mistakes a sibling's work) and progress counter. */
  private depsFor(logger: PipelineDeps['logger']): PipelineDeps {
    const base = this.opts.deps;
    const metrics = this.metrics;
    let last = 0;
    const progress: ProgressSink = {
      start: () => (last = 0),
      update: (phase, done) => {
        if (phase !== 'download') return;
        metrics.bytesDownloaded.inc({}, done - last);
        last = done;
      },
      end: () => undefined,
    };
    return {
      ...base,
      owner: `${base.owner}:${++this.workerSeq}`,
      logger,
      progress,
      signal: this.workAbort.signal,
    };
  }
}

/** Below this much free space on the state filesystem the agent reports degraded. */
const minimumStateFreeBytes = 64 * 1024 * 1024;

/** The bucket and key a body names (null if it names none: it locks only itself). */
/** The image key a message's work is serialized on: a sidecar's is the image it signs. */
function lockedKeyOf(target: EventTarget): string {
  return target.kind === 'sidecar.put'
    ? (sidecarTarget(target.key)?.imageKey ?? target.key)
    : target.key;
}

function targetOf(body: string): EventTarget | null {
  let o: unknown;
  try {
    o = JSON.parse(body);
  } catch {
    // Not JSON: applyMessage reports it.
    return null;
  }
  const { kind, bucket, key, eTag, versionId } = (o ?? {}) as Record<string, unknown>;
  if (typeof bucket !== 'string' || typeof key !== 'string') return null;
  return {
    kind: typeof kind === 'string' ? kind : null,
    bucket,
    key,
    eTag: typeof eTag === 'string' ? eTag : null,
    versionId: typeof versionId === 'string' ? versionId : null,
  };
}
