/**
 * The daemon's metrics, rendered in the Prometheus text exposition format
 * (version 0.0.4): work counters, pool capacity, images by state, build
 * info, and process / event-loop metrics. A few dozen series do not justify
 * a client library: prom-client 15.1.3 was measured in its place (2026-12,
 * the agent's module graph, medians of 9 alternating runs): +35 ms CPU and
 * +2.3 MiB RSS at start, +67 KB minified in the agent's chunk, four packages
 * to license in the .deb, and its defaults cannot keep these process_* HELP
 * texts or the quantile-labelled nodejs_eventloop_lag_seconds, so only the
 * ~120 lines of rendering below would go.
 */
import { readdirSync } from 'node:fs';
import { monitorEventLoopDelay, type ELDHistogram } from 'node:perf_hooks';
import type { PoolStatus } from '../storage/backend.js';
import { build } from '../version.js';

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`,
  );
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

abstract class Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
  ) {}
  abstract samples(): string[];
  render(): string {
    return [
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} ${this.type}`,
      ...this.samples(),
    ]
      .join('\n')
      .concat('\n');
  }
}

export class Counter extends Metric {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = labelText(labels);
    const cur = this.values.get(k) ?? { labels, value: 0 };
    cur.value += by;
    this.values.set(k, cur);
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }
  samples(): string[] {
    if (this.values.size === 0) return [`${this.name} 0`];
    return [...this.values.values()].map((v) => `${this.name}${labelText(v.labels)} ${v.value}`);
  }
}

export class Gauge extends Metric {
  private value = 0;
  constructor(
    name: string,
    help: string,
    private readonly read?: () => number,
  ) {
    super(name, help, 'gauge');
  }
  set(v: number): void {
    this.value = v;
  }
  get(): number {
    return this.read ? this.read() : this.value;
  }
  samples(): string[] {
    return [`${this.name} ${this.get()}`];
  }
}

export class Histogram extends Metric {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(
    name: string,
    help: string,
    private readonly buckets: readonly number[],
  ) {
    super(name, help, 'histogram');
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count++;
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i]!++;
    });
  }
  samples(): string[] {
    return [
      ...this.buckets.map((b, i) => `${this.name}_bucket{le="${b}"} ${this.counts[i]}`),
      `${this.name}_bucket{le="+Inf"} ${this.count}`,
      `${this.name}_sum ${this.sum}`,
      `${this.name}_count ${this.count}`,
    ];
  }
}

/** A gauge with labels, set whole at each refresh (e.g. images by status). */
export class LabeledGauge extends Metric {
  private values: { labels: Labels; value: number }[] = [];
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  replace(values: { labels: Labels; value: number }[]): void {
    this.values = values;
  }
  get(labels: Labels): number | undefined {
    const k = labelText(labels);
    return this.values.find((v) => labelText(v.labels) === k)?.value;
  }
  samples(): string[] {
    return this.values.map((v) => `${this.name}${labelText(v.labels)} ${v.value}`);
  }
}

/** What the agent's metrics read at scrape time. */
export interface MetricSources {
  /** Image count per status (the store). */
  imagesByStatus?: () => Record<string, number>;
  /** The storage pool's capacity (the backend). */
  pool?: () => Promise<PoolStatus>;
}

const secondsBuckets = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900] as const;

export class AgentMetrics {
  readonly messages = new Counter(
    'thinrelay_messages_total',
    'Queue messages handled, by outcome (applied, stale, superseded, failed, retrying, released).',
  );
  readonly imagesProcessed = new Counter(
    'thinrelay_images_processed_total',
    'Image events applied (put: image ready and active; delete: image retired).',
  );
  readonly imagesFailed = new Counter(
    'thinrelay_images_failed_total',
    'Image events that failed, by reason code and whether the failure is permanent.',
  );
  readonly signatureChecks = new Counter(
    'thinrelay_signature_checks_total',
    'Signature checks (trust/), by mode (warn, require), verdict (verified, failed) and reason code.',
  );
  readonly bytesDownloaded = new Counter(
    'thinrelay_downloaded_bytes_total',
    'Bytes downloaded from S3 and unpacked.',
  );
  readonly receiveErrors = new Counter(
    'thinrelay_receive_errors_total',
    'ReceiveMessage calls that failed.',
  );
  readonly heartbeatErrors = new Counter(
    'thinrelay_heartbeat_errors_total',
    'ChangeMessageVisibility calls that failed.',
  );
  readonly imageDuration = new Histogram(
    'thinrelay_image_duration_seconds',
    'Time from receiving an image event to its recorded outcome.',
    secondsBuckets,
  );
  readonly receiveLag = new Histogram(
    'thinrelay_receive_lag_seconds',
    'Time from SQS accepting a message to this agent receiving it.',
    secondsBuckets,
  );
  readonly inFlight: Gauge;
  readonly lastPoll = new Gauge(
    'thinrelay_last_poll_timestamp_seconds',
    'When the last ReceiveMessage call succeeded (Unix time).',
  );

  readonly buildInfo = new LabeledGauge(
    'thinrelay_build_info',
    'The running build: version, commit and Node.js version (always 1).',
  );
  readonly images = new LabeledGauge(
    'thinrelay_images',
    'Images in the state database, by status (pending, processing, ready, failed, removed).',
  );
  readonly poolBytes = new LabeledGauge(
    'thinrelay_pool_bytes',
    'Storage pool capacity: area (data, metadata) and kind (total, used); metadata only for devmapper.',
  );
  readonly poolFree = new Gauge(
    'thinrelay_pool_free_bytes',
    'Space a new volume can still take from the pool (after the configured floors).',
  );
  readonly poolHealthy = new Gauge(
    'thinrelay_pool_healthy',
    '1 when the pool exists and reports healthy, else 0.',
  );
  readonly poolErrors = new Counter(
    'thinrelay_pool_status_errors_total',
    'Scrapes where the pool status could not be read.',
  );
  readonly poolEvictions = new Counter(
    'thinrelay_pool_evictions_total',
    'Images evicted for pool space, by what started the pass (timer, admission, image, start, operator).',
  );
  readonly poolRetirements = new Counter(
    'thinrelay_pool_retirements_total',
    'Images removed by policy, by reason (superseded: newer versions kept; evicted: space).',
  );
  readonly poolReclaimed = new Counter(
    'thinrelay_pool_reclaimed_bytes_total',
    'Pool bytes given back by retirements and evictions (measured before and after each).',
  );
  readonly poolPinned = new Gauge(
    'thinrelay_pool_pinned_bytes',
    'Bytes of layers that pinned images hold (as unpacked), at the last pool pass.',
  );
  readonly poolLastPass = new Gauge(
    'thinrelay_pool_last_pass_timestamp_seconds',
    'When the last pool pass (retention, eviction) ended (Unix time).',
  );
  readonly poolPassDuration = new Histogram(
    'thinrelay_pool_pass_duration_seconds',
    'How long a pool pass took.',
    secondsBuckets,
  );
  readonly poolDegraded = new Gauge(
    'thinrelay_pool_degraded',
    '1 when the pool is over its high watermark with nothing left to evict (pins, devices in use), else 0.',
  );
  private readonly process = new ProcessMetrics();

  constructor(
    inFlight: () => number,
    private readonly sources: MetricSources = {},
  ) {
    this.inFlight = new Gauge(
      'thinrelay_images_in_flight',
      'Messages being handled now.',
      inFlight,
    );
    this.buildInfo.replace([
      {
        labels: { version: build.version, commit: build.commit, node: process.version },
        value: 1,
      },
    ]);
  }

  /** Reads the pool and the store, then renders everything (what GET /metrics serves). */
  async collect(): Promise<string> {
    if (this.sources.imagesByStatus !== undefined) {
      this.images.replace(
        Object.entries(this.sources.imagesByStatus()).map(([status, value]) => ({
          labels: { status },
          value,
        })),
      );
    }
    if (this.sources.pool !== undefined) {
      try {
        const s = await this.sources.pool();
        const rows = [
          { labels: { area: 'data', kind: 'total' }, value: s.dataTotalBytes },
          { labels: { area: 'data', kind: 'used' }, value: s.dataUsedBytes },
        ];
        if (s.metadataTotalBytes !== null && s.metadataUsedBytes !== null) {
          rows.push(
            { labels: { area: 'metadata', kind: 'total' }, value: s.metadataTotalBytes },
            { labels: { area: 'metadata', kind: 'used' }, value: s.metadataUsedBytes },
          );
        }
        this.poolBytes.replace(rows);
        this.poolFree.set(s.freeBytes);
        this.poolHealthy.set(s.healthy === true ? 1 : 0);
      } catch {
        this.poolErrors.inc();
        this.poolHealthy.set(0);
      }
    }
    return this.render();
  }

  render(): string {
    return [
      this.buildInfo,
      this.images,
      this.poolBytes,
      this.poolFree,
      this.poolHealthy,
      this.poolErrors,
      this.poolEvictions,
      this.poolRetirements,
      this.poolReclaimed,
      this.poolPinned,
      this.poolLastPass,
      this.poolPassDuration,
      this.poolDegraded,
      ...this.process.metrics(),
      this.messages,
      this.imagesProcessed,
      this.imagesFailed,
      this.signatureChecks,
      this.bytesDownloaded,
      this.receiveErrors,
      this.heartbeatErrors,
      this.imageDuration,
      this.receiveLag,
      this.inFlight,
      this.lastPoll,
    ]
      .map((m) => m.render())
      .join('');
  }
}

/** process_* and nodejs_* series under the names prom-client's defaults use. */
class ProcessMetrics {
  private readonly loop: ELDHistogram = monitorEventLoopDelay({ resolution: 20 });
  private readonly startSeconds = Math.round(Date.now() / 1000 - process.uptime());
  constructor() {
    this.loop.enable();
  }
  metrics(): Metric[] {
    const cpu = process.cpuUsage();
    const mem = process.memoryUsage();
    const g = (name: string, help: string, v: number): Gauge => new Gauge(name, help, () => v);
    const lag = new LabeledGauge(
      'nodejs_eventloop_lag_seconds',
      'Event-loop delay since the last scrape, by quantile (and max).',
    );
    const s = (ns: number): number => (Number.isFinite(ns) ? ns / 1e9 : 0);
    lag.replace([
      { labels: { quantile: '0.5' }, value: s(this.loop.percentile(50)) },
      { labels: { quantile: '0.99' }, value: s(this.loop.percentile(99)) },
      { labels: { quantile: 'max' }, value: s(this.loop.max) },
    ]);
    this.loop.reset();
    let fds = 0;
    try {
      fds = readdirSync('/proc/self/fd').length;
    } catch {
      // Not Linux: no count.
    }
    const userCpu = new Counter('process_cpu_user_seconds_total', 'User CPU time spent.');
    userCpu.inc({}, cpu.user / 1e6);
    const systemCpu = new Counter('process_cpu_system_seconds_total', 'System CPU time spent.');
    systemCpu.inc({}, cpu.system / 1e6);
    return [
      userCpu,
      systemCpu,
      g('process_resident_memory_bytes', 'Resident memory size.', mem.rss),
      g('process_start_time_seconds', 'Start time of the process (Unix time).', this.startSeconds),
      g('process_open_fds', 'Open file descriptors.', fds),
      g('nodejs_heap_size_used_bytes', 'V8 heap in use.', mem.heapUsed),
      g('nodejs_heap_size_total_bytes', 'V8 heap allocated.', mem.heapTotal),
      g(
        'nodejs_external_memory_bytes',
        'Memory of C++ objects bound to JS (buffers).',
        mem.external,
      ),
      lag,
    ];
  }
}
