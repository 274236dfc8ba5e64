/**
 * Writes this host's fleet items without ever holding up an image: callers
 * hand an item over and go on. Per item only the newest version is kept; a
 * failed write is retried with exponential backoff and full jitter until it
 * succeeds (or the agent stops), counted and logged on every failure. The
 * table refuses an image item older than the one it holds, so a late retry
 * never overwrites a newer state.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostImageItem, HostItem } from '../../../../schema/fleet.js';
import { backoffMs, type FleetTable } from '../../../../schema/fleet-table.js';
import { errorMessage } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { FleetMetrics } from './fleet-metrics.js';

type Write = { kind: 'host'; item: HostItem } | { kind: 'image'; item: HostImageItem };

export interface FleetWriterOptions {
  logger: Logger;
  metrics: FleetMetrics;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export class FleetWriter {
  private readonly pending = new Map<string, Write>();
  private readonly running = new Map<string, Promise<void>>();
  private readonly closing = new AbortController();
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(
    private readonly table: FleetTable,
    private readonly opts: FleetWriterOptions,
  ) {
    this.baseDelayMs = opts.baseDelayMs ?? 500;
    this.maxDelayMs = opts.maxDelayMs ?? 60_000;
  }

  host(item: HostItem): void {
    this.submit(`${item.pk}/${item.sk}`, { kind: 'host', item });
  }

  image(item: HostImageItem): void {
    this.submit(`${item.pk}/${item.sk}`, { kind: 'image', item });
  }

  /** Items not yet written. */
  get backlog(): number {
    return this.pending.size + this.running.size;
  }

  /** Wait up to `timeoutMs` for the backlog, then stop retrying; returns what stayed unwritten. */
  async close(timeoutMs: number): Promise<number> {
    const all = (async () => {
      while (this.running.size > 0) await Promise.all([...this.running.values()]);
    })();
    await Promise.race([all, sleep(timeoutMs, undefined, { ref: false })]);
    this.closing.abort();
    await all;
    const left = this.pending.size;
    if (left > 0)
      this.opts.logger.warn('fleet items left unwritten at shutdown', {
        items: [...this.pending.keys()].slice(0, 20),
        count: left,
      });
    return left;
  }

  private submit(id: string, write: Write): void {
    if (this.closing.signal.aborted) return;
    this.pending.set(id, write);
    if (this.running.has(id)) return;
    const run = this.drain(id).finally(() => this.running.delete(id));
    this.running.set(id, run);
  }

  /** Write the newest version of one item until none is pending. */
  private async drain(id: string): Promise<void> {
    let failures = 0;
    for (;;) {
      const write = this.pending.get(id);
      if (write === undefined || this.closing.signal.aborted) return;
      this.pending.delete(id);
      try {
        if (write.kind === 'host') await this.table.putHost(write.item);
        else await this.table.putHostImage(write.item);
        this.opts.metrics.writes.inc({ item: write.kind });
        if (failures > 0)
          this.opts.logger.info('fleet item written after retries', { item: id, failures });
        failures = 0;
      } catch (err) {
        failures++;
        this.opts.metrics.writeFailures.inc({ item: write.kind });
        // A newer version submitted meanwhile replaces this one.
        if (!this.pending.has(id)) this.pending.set(id, write);
        const delayMs = backoffMs(failures, this.baseDelayMs, this.maxDelayMs);
        this.opts.logger.warn('fleet item write failed; retrying', {
          item: id,
          failures,
          delayMs,
          error: errorMessage(err),
        });
        try {
          await sleep(delayMs, undefined, { signal: this.closing.signal });
        } catch {
          return;
        }
      }
    }
  }
}
