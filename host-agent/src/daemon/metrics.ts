/**
 * The daemon's metrics, rendered in the Prometheus text exposition format
 * (version 0.0.4). A handful of counters, gauges and histograms do not
 * justify a client library.
 */

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

  constructor(inFlight: () => number) {
    this.inFlight = new Gauge(
      'thinrelay_images_in_flight',
      'Messages being handled now.',
      inFlight,
    );
  }

  render(): string {
    return [
      this.messages,
      this.imagesProcessed,
      this.imagesFailed,
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
