/**
 * When the parallel download widens: a measure of how much of the time its
 * consumer has been kept waiting for bytes. Counted over windows of
 * WINDOW_MS (a link that slows down later is still noticed), and judged
 * against at least MIN_SPAN_MS of time: a single short wait just after a
 * window starts is a stall, not a slow link, and must not widen a fast one.
 */

/** Widen only after the consumer waited at least this long in all... */
const STARVED_MS_TO_WIDEN = 20;
/** ...and for at least this share of the time... */
const STARVED_SHARE = 0.25;
/** ...of at least this long (so a lone stall up to SHARE × this never widens)... */
const MIN_SPAN_MS = 250;
/** ...counted over windows of this long. */
const WINDOW_MS = 1000;

export class StarvationMeter {
  private starvedMs = 0;
  private since: number;

  constructor(private readonly now: () => number = () => performance.now()) {
    this.since = now();
  }

  /**
   * The consumer just waited `ms` for bytes. True when it has been starved
   * enough to widen; the count then starts again.
   */
  waited(ms: number): boolean {
    const now = this.now();
    if (now - this.since > WINDOW_MS) this.restart(now);
    this.starvedMs += ms;
    const span = Math.max(now - this.since, MIN_SPAN_MS);
    if (this.starvedMs < STARVED_MS_TO_WIDEN || this.starvedMs < span * STARVED_SHARE) {
      return false;
    }
    this.restart(now);
    return true;
  }

  private restart(now: number): void {
    this.starvedMs = 0;
    this.since = now;
  }
}
