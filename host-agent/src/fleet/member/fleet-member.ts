/**
 * A group agent's membership of the fleet, from joining to leaving:
 *
 * join()  read the deployment item, register the host's queues (created or
 *         brought to the group's settings), record the registration in the
 *         state dir, write the HostItem;
 * start() (after the daemon's reconcile) heartbeats and catch-up sync rounds:
 *         one at once, then every `syncSeconds`, and one soon after the
 *         queue had to be recreated (its messages were lost);
 * stop()  no new sync work; close() waits for the round (interrupting it
 *         after the drain deadline) and flushes the fleet items.
 *
 * The daemon's poll loop is not changed by any of this: it gets the queue,
 * the shared key lock and an observer that reports outcomes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { SQSClient } from '@aws-sdk/client-sqs';
import {
  fleetKeys,
  type DeploymentConfigItem,
  type GroupQueueSettings,
} from '../../../../schema/fleet.js';
import type { FleetTable } from '../../../../schema/fleet-table.js';
import { sidecarTarget } from '../../../../schema/sidecar-key.js';
import type { AgentObserver } from '../../daemon/agent.js';
import { resolvePoolPolicy, writeGroupPolicy } from '../../pool/policy.js';
import { SIGNATURES_OFF } from '../../../../schema/signature-policy.js';
import { prepareVerifier } from '../../trust/check-signature.js';
import { hostTrustPolicy, writeGroupSignatures } from '../../trust/host-policy.js';
import { KeyLock } from '../../daemon/key-lock.js';
import { errorMessage, isThinrelayError, UsageError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { PipelineDeps } from '../../pipeline/context.js';
import { agentVersion } from './agent-version.js';
import { runSyncRound, type SyncRoundResult } from './catch-up-sync.js';
import { readDeployment as readDeploymentItem } from './fleet-client.js';
import { FleetMetrics } from './fleet-metrics.js';
import type { FleetSettings } from './fleet-settings.js';
import { FleetWriter } from './fleet-writer.js';
import { HostHeartbeat } from './host-heartbeat.js';
import { ensureHostQueues, type HostQueueUrls } from './host-queues.js';
import { ImageReporter } from './image-reporter.js';
import { RegisteredHostQueue } from './registered-queue.js';
import { readRecord, writeRecord } from './registration-record.js';

export interface FleetMemberOptions {
  settings: FleetSettings;
  hostId: string;
  table: FleetTable;
  sqs: SQSClient;
  deps: PipelineDeps;
  logger: Logger;
  /** In-flight sync images get this long after stop() before they are interrupted. */
  drainSeconds: number;
  /** Start-up retries end when this is aborted (a signal). */
  signal: AbortSignal;
}

export class FleetMember {
  readonly metrics = new FleetMetrics();
  readonly keyLock = new KeyLock();
  readonly writer: FleetWriter;
  private deployment!: DeploymentConfigItem;
  private queueSettings!: GroupQueueSettings;
  private urls!: HostQueueUrls;
  private hostQueue!: RegisteredHostQueue;
  private reporter!: ImageReporter;
  private heartbeat!: HostHeartbeat;
  private stopping = false;
  private stoppedAt = 0;
  private readonly syncAbort = new AbortController();
  private readonly wakers = new Set<() => void>();
  private syncSoon = false;
  private loops: Promise<void>[] = [];

  constructor(private readonly opts: FleetMemberOptions) {
    this.writer = new FleetWriter(opts.table, {
      logger: opts.logger,
      metrics: this.metrics,
      maxDelayMs: opts.settings.writeRetryMaxMs,
      baseDelayMs: Math.min(500, opts.settings.writeRetryMaxMs),
    });
  }

  get queue(): RegisteredHostQueue {
    return this.hostQueue;
  }

  get group(): string {
    return this.opts.settings.group;
  }

  /** Register (retrying what may be temporary until it works or the signal aborts). */
  async join(): Promise<void> {
    const { settings, hostId, logger, deps } = this.opts;
    for (let attempt = 1; ; attempt++) {
      try {
        this.deployment = await this.readDeployment();
        this.urls = await this.registerQueues();
        break;
      } catch (err) {
        if (err instanceof UsageError || this.opts.signal.aborted) throw err;
        const delayMs = Math.min(30_000, 1000 * 2 ** Math.min(attempt - 1, 5));
        logger.warn('fleet registration failed; retrying', {
          attempt,
          delayMs,
          error: errorMessage(err),
        });
        await sleep(delayMs, undefined, { signal: this.opts.signal });
      }
    }
    const previous = readRecord(deps.config.stateDir);
    const registeredAt =
      previous?.hostId === hostId && previous.group === settings.group
        ? previous.registeredAt
        : Date.now();
    await writeRecord(deps.config.stateDir, {
      group: settings.group,
      hostId,
      namePrefix: this.deployment.namePrefix,
      table: this.opts.table.tableName,
      ...this.urls,
      registeredAt,
    });
    this.hostQueue = new RegisteredHostQueue(this.opts.sqs, this.urls.queueUrl, () =>
      this.queueDeleted(),
    );
    this.reporter = new ImageReporter(this.writer, deps.store, {
      hostId,
      group: settings.group,
      bucket: this.deployment.bucket,
    });
    this.heartbeat = new HostHeartbeat(
      {
        hostId,
        group: settings.group,
        queueUrl: () => this.hostQueue.url,
        dlqUrl: this.urls.dlqUrl,
        agentVersion: agentVersion(),
        backend: deps.objects.backend,
        registeredAt,
      },
      this.opts.sqs,
      this.writer,
      this.metrics,
      logger,
    );
    await this.heartbeat.beat();
    logger.info('registered in the fleet', {
      group: settings.group,
      hostId,
      table: this.opts.table.tableName,
      queueUrl: this.urls.queueUrl,
      dlqUrl: this.urls.dlqUrl,
      hostItem: fleetKeys.hostPk(hostId),
    });
  }

  /** Reports what the daemon does with each message; never throws into the daemon. */
  readonly observer: AgentObserver = {
    started: (t) =>
      this.report(() => {
        // A sidecar is never an image of its own (whatever kind an older producer gave it).
        if (t.kind === 'image.put' && sidecarTarget(t.key) === null)
          this.reporter.working(t.bucket, t.key, t.eTag, t.versionId);
      }),
    decided: (d) =>
      this.report(() => {
        const e = d.event;
        if (e === null) return;
        // A sidecar is never an item of its own: the image it signs is what changed.
        const signed = sidecarTarget(e.key);
        if (signed !== null) return this.reporter.settled(e.bucket, signed.imageKey);
        if (d.outcome === 'retrying' || d.outcome === 'released')
          this.reporter.waiting(
            e.bucket,
            e.key,
            e.eTag,
            d.outcome === 'released' ? 'INTERRUPTED' : (d.reasonCode ?? 'UNKNOWN'),
            d.reason ?? d.outcome,
          );
        else this.reporter.settled(e.bucket, e.key);
      }),
    removedByPolicy: (bucket, key) => this.report(() => this.reporter.settled(bucket, key)),
  };

  /** A report reads the state database; if that fails, the image's outcome stands. */
  private report(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.metrics.writeFailures.inc({ item: 'image' });
      this.opts.logger.warn('could not report an image to the fleet table', {
        error: errorMessage(err),
      });
    }
  }

  /** Heartbeats and sync rounds; call once the daemon has reconciled. */
  start(): void {
    this.loops = [this.heartbeatLoop(), this.syncLoop()];
  }

  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stoppedAt = Date.now();
    this.wakeAll();
  }

  /** After stop(): wait for the loops (interrupting sync work at the drain deadline), flush. */
  async close(): Promise<void> {
    this.stop();
    const loops = Promise.all(this.loops);
    // The same deadline as the daemon's drain: counted from stop(), not from here.
    const leftMs = Math.max(0, this.stoppedAt + this.opts.drainSeconds * 1000 - Date.now());
    const deadline = sleep(leftMs, 'deadline' as const, { ref: false });
    if ((await Promise.race([loops.then(() => 'done' as const), deadline])) === 'deadline') {
      this.opts.logger.warn('drain deadline passed: interrupting sync work', {});
      this.syncAbort.abort(new Error('agent shutdown deadline'));
    }
    await loops;
    await this.writer.close(5_000);
  }

  private async readDeployment(): Promise<DeploymentConfigItem> {
    const { settings, table } = this.opts;
    const d = await readDeploymentItem(table, this.opts.signal);
    const groupSettings = d.groups[settings.group];
    if (groupSettings === undefined) {
      throw new UsageError(
        'CONFIG',
        `group ${settings.group} is not in the deployment (groups: ${Object.keys(d.groups).join(', ') || 'none'})`,
        'use one of the groups of the stack, or add this group to the deployment config and deploy',
      );
    }
    if (settings.bucket !== null && settings.bucket !== d.bucket) {
      throw new UsageError(
        'CONFIG',
        `THINRELAY_BUCKET is ${settings.bucket} but the deployment's bucket is ${d.bucket}`,
        'unset THINRELAY_BUCKET (group agents take the bucket from the deployment)',
      );
    }
    // The group's pool policy, under this host's own settings: in force from the next pass.
    const config = this.opts.deps.config;
    const group = d.pools[settings.group];
    config.pool = resolvePoolPolicy(config.poolOverrides, group);
    // The group's signature policy, narrowed by this host's override: in force for the next image.
    const signatures = d.signatures?.[settings.group] ?? SIGNATURES_OFF;
    config.signatures = hostTrustPolicy(signatures);
    void prepareVerifier(config.signatures, (message, err) =>
      this.opts.logger.warn(message, { error: errorMessage(err) }),
    );
    try {
      await writeGroupSignatures(config.stateDir, signatures);
    } catch (err) {
      this.opts.logger.warn('could not keep the group signature policy for the CLI', {
        error: errorMessage(err),
      });
    }
    try {
      await writeGroupPolicy(config.stateDir, group);
    } catch (err) {
      this.opts.logger.warn('could not keep the group pool policy for the CLI', {
        error: errorMessage(err),
      });
    }
    return d;
  }

  private async registerQueues(): Promise<HostQueueUrls> {
    const settings = this.deployment.groups[this.opts.settings.group]!;
    const urls = await ensureHostQueues(
      this.opts.sqs,
      {
        namePrefix: this.deployment.namePrefix,
        group: this.opts.settings.group,
        hostId: this.opts.hostId,
      },
      settings,
    );
    this.queueSettings = settings;
    return urls;
  }

  /** The poll loop found the queue gone: register again, and catch up soon. */
  private async queueDeleted(): Promise<string> {
    this.opts.logger.warn('host queue does not exist: registering it again', {
      queueUrl: this.hostQueue.url,
    });
    this.urls = await this.registerQueues();
    this.metrics.queueRecreated.inc();
    this.opts.logger.info('host queue created again; a sync round follows', {
      queueUrl: this.urls.queueUrl,
    });
    this.requestSync();
    void this.heartbeat.beat();
    return this.urls.queueUrl;
  }

  private requestSync(): void {
    this.syncSoon = true;
    this.wakeAll();
  }

  private wakeAll(): void {
    for (const wake of [...this.wakers]) wake();
  }

  /** Sleep until `ms` pass, stop() is called, or `until` turns true on a wake. */
  private async pauseFor(ms: number, until?: () => boolean): Promise<void> {
    const end = Date.now() + ms;
    while (!this.stopping && Date.now() < end && !(until?.() ?? false)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.wakers.delete(done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(0, end - Date.now()));
        this.wakers.add(done);
      });
    }
  }

  private async heartbeatLoop(): Promise<void> {
    for (;;) {
      await this.pauseFor(this.opts.settings.heartbeatSeconds * 1000);
      if (this.stopping) return;
      await this.heartbeat.beat();
    }
  }

  private async syncLoop(): Promise<void> {
    for (;;) {
      if (this.stopping) return;
      this.syncSoon = false;
      await this.syncOnce();
      if (!this.syncSoon)
        await this.pauseFor(this.opts.settings.syncSeconds * 1000, () => this.syncSoon);
    }
  }

  private async syncOnce(): Promise<void> {
    const { logger, settings } = this.opts;
    try {
      await this.refreshDeployment();
      const result = await runSyncRound(
        {
          deps: this.opts.deps,
          keyLock: this.keyLock,
          reporter: this.reporter,
          metrics: this.metrics,
          logger,
          concurrency: settings.syncConcurrency,
          signal: this.syncAbort.signal,
          stopping: () => this.stopping,
        },
        this.deployment,
        settings.group,
      );
      this.recordRound(result);
    } catch (err) {
      this.metrics.syncRounds.inc({ result: 'failed' });
      logger.warn('sync round failed; retrying next period', {
        code: isThinrelayError(err) ? err.code : undefined,
        error: errorMessage(err),
      });
    }
  }

  /** Each round reads the deployment again; changed queue settings are applied. */
  private async refreshDeployment(): Promise<void> {
    try {
      this.deployment = await this.readDeployment();
    } catch (err) {
      if (err instanceof UsageError) throw err;
      this.opts.logger.warn('could not read the deployment item; using the last one', {
        error: errorMessage(err),
      });
      return;
    }
    const now = this.deployment.groups[this.opts.settings.group]!;
    if (JSON.stringify(now) !== JSON.stringify(this.queueSettings)) {
      this.opts.logger.info("the group's queue settings changed: applying them", {
        settings: now,
      });
      await this.registerQueues();
    }
  }

  private recordRound(r: SyncRoundResult): void {
    const m = this.metrics;
    m.syncRounds.inc({ result: 'ok' });
    m.syncLastRequests.set(r.requests);
    m.syncLastKeys.set(r.keys);
    m.syncLastSeconds.set(r.durationMs / 1000);
    m.syncLastSuccess.set(Math.floor(Date.now() / 1000));
    this.opts.logger.info('sync round done', { ...r });
  }
}
