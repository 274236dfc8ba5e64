/**
 * The parallel half of downloadObject: the pinned object (or the window of
 * it asked for) as consecutive byte ranges (parts), up to `concurrency` ranged GETs in flight, the bytes
 * handed to the consumer strictly in order and hashed in order.
 *
 * Memory is bounded: a part is requested only when it is among the `width`
 * parts from the one being handed over, so at most width × part size bytes
 * wait in memory, however slow the consumer. The width adapts: it starts at
 * 2 and doubles (up to `concurrency`) whenever the consumer has been kept
 * waiting for bytes, so a slow link gets many connections while a fast one
 * (faster than the unpack) keeps two and little memory. The part being
 * handed over streams through in slices of about 1 MiB as they arrive. A part whose
 * body breaks is resumed alone (`Range: bytes=<its received>-<its end>`)
 * after a backoff with full jitter, from the download's one retry budget;
 * any part that can't be retried (OBJECT_CHANGED, NOT_FOUND…) or spends the
 * budget stops every other part at once, and nothing after it is handed over.
 */
import { createHash } from 'node:crypto';
import { ImageError } from '../errors.js';
import { StarvationMeter } from './starvation.js';
import { verifyWindow, windowOf, type DownloadResult, type DownloadRun } from './download.js';
import {
  bodyChunks,
  checkPinnedSize,
  destroyAttempt,
  getRange,
  objectChanged,
  type Attempt,
} from './get-range.js';

/**
 * Bytes handed to the consumer at once: about what the unpacker gathers
 * before writing (so it needs no copy of its own), few enough that a slice
 * written synchronously doesn't keep the sockets unread for long.
 */
const SLICE_BYTES = 1024 * 1024;

/**
 * Slices this module gathered into a buffer of their own (nothing else refers
 * to it): the download worker may transfer these to another thread instead
 * of copying them. Network chunks handed over as they are never are.
 */
export const ownedSlices = new WeakSet<Uint8Array>();

/** Ranged GETs in flight at first (at most `concurrency`). */
const START_WIDTH = 2;

/** One byte range of the object and what has arrived of it. */
class Part {
  /** Received chunks not yet handed over. */
  private queue: Uint8Array[] = [];
  private queued = 0;
  /** Bytes of this part received so far. */
  fetched = 0;
  /** Bytes of this part handed to the consumer so far. */
  handed = 0;
  done = false;
  /** The GET in flight for this part, if any. */
  attempt: Attempt | undefined;

  constructor(
    readonly index: number,
    readonly start: number,
    /** Inclusive. */
    readonly end: number,
  ) {}

  get length(): number {
    return this.end - this.start + 1;
  }

  push(chunk: Uint8Array): void {
    this.queue.push(chunk);
    this.queued += chunk.byteLength;
    this.fetched += chunk.byteLength;
  }

  /** Whether the consumer has a slice to take: a full one, or the part's last bytes. */
  get ready(): boolean {
    return this.queued >= SLICE_BYTES || (this.queued > 0 && this.fetched === this.length);
  }

  /**
   * The next slice: the queued chunks up to about SLICE_BYTES, in one buffer
   * (the copy the unpacker would otherwise make to gather them).
   */
  take(): Uint8Array {
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length && bytes < SLICE_BYTES) bytes += this.queue[n++]!.byteLength;
    const taken = this.queue.splice(0, n);
    this.queued -= bytes;
    this.handed += bytes;
    if (taken.length === 1) return taken[0]!;
    const slice = Buffer.concat(taken, bytes);
    if (slice.byteOffset === 0 && slice.byteLength === slice.buffer.byteLength) {
      ownedSlices.add(slice);
    }
    return slice;
  }
}

export async function* parallelStream(
  run: DownloadRun,
  shape: { partSize: number; concurrency: number },
): AsyncGenerator<Uint8Array, void, undefined> {
  const { client, ref, window, opts, settle, where, log, budget } = run;
  const { partSize, concurrency } = shape;
  const signal = opts.signal;
  const parts: Part[] = [];

  /** Stops every part: backoffs, requests in flight, bodies. */
  const stop = new AbortController();
  // Set from callbacks: a holder, so checks after an await are not narrowed away.
  const state: { failure: { error: unknown } | null } = { failure: null };
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  const fail = (error: unknown): void => {
    state.failure ??= { error };
    stop.abort(error);
    for (const p of parts) if (p.attempt !== undefined) destroyAttempt(p.attempt);
    notify();
  };
  const onAbort = (): void => fail(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  /** Fetch one part to its end, resuming it alone; throws what ends the download. */
  const fetchPart = async (p: Part): Promise<void> => {
    const position = { failuresInARow: 0 };
    while (p.fetched < p.length) {
      if (state.failure !== null) return;
      const from = p.start + p.fetched;
      const attempt: Attempt = { controller: new AbortController(), body: undefined };
      p.attempt = attempt;
      const res = await getRange(client, ref, from, p.end, attempt, where);
      if (state.failure !== null) return destroyAttempt(attempt);
      if (!res.ok) {
        await budget.failed(res.error, position, false, from, { part: p.index }, stop.signal);
        continue;
      }
      if (res.body === undefined) {
        throw new ImageError(
          'DOWNLOAD_FAILED',
          `GetObject ${where} returned no body for bytes ${from}-${p.end}`,
        );
      }
      // A store that ignored Range sends the whole object: drop what comes
      // before the range, stop reading once the range is complete.
      const whole = res.whole;
      let skip = res.skip;
      const read = { error: null as unknown };
      for await (let chunk of bodyChunks(res.body, read)) {
        if (state.failure !== null) break;
        if (skip > 0) {
          const drop = Math.min(skip, chunk.byteLength);
          skip -= drop;
          chunk = chunk.subarray(drop);
        }
        const room = p.length - p.fetched;
        if (chunk.byteLength > room) {
          if (!whole) {
            throw objectChanged(where, `sent more than the ${p.length} bytes of part ${p.index}`);
          }
          chunk = chunk.subarray(0, room);
        }
        if (chunk.byteLength === 0) continue;
        p.push(chunk);
        if (p.ready) notify();
        if (whole && p.fetched === p.length) break;
      }
      if (state.failure !== null) return destroyAttempt(attempt);
      if (read.error === null && p.fetched === p.length) {
        if (whole) destroyAttempt(attempt); // the rest of the object is not ours to read
        p.attempt = undefined; // its socket goes back to the pool: never abort it from here
        return;
      }
      destroyAttempt(attempt);
      const at = p.start + p.fetched;
      const reason =
        read.error ??
        new Error(
          `response body for bytes ${from}-${p.end} ended early at byte ${at} (premature close)`,
        );
      await budget.failed(reason, position, at > from, at, { part: p.index }, stop.signal);
    }
  };

  // Adaptive width: few ranges at first, twice as many each time the consumer
  // has been kept waiting for bytes (a link slower than the unpack). A fast
  // link never widens: more ranges would only fill memory ahead of the consumer.
  let width = Math.min(START_WIDTH, concurrency);
  let inFlight = 0;
  /** The part being handed over: parts are requested at most `width` from it. */
  let handing = 0;
  let launched = 0;
  const launch = (): void => {
    const limit = Math.min(handing + width, parts.length);
    while (launched < limit && inFlight < width && state.failure === null) {
      const p = parts[launched++]!;
      inFlight += 1;
      fetchPart(p).then(
        () => {
          p.done = true;
          inFlight -= 1;
          launch();
          notify();
        },
        (err: unknown) => fail(signal?.aborted ? signal.reason : err),
      );
    }
  };
  const starved = new StarvationMeter();
  /** The consumer waited `ms` for bytes of a part already streaming: widen when that is often. */
  const waited = (ms: number): void => {
    if (width >= concurrency || !starved.waited(ms)) return;
    width = Math.min(concurrency, width * 2);
    log.debug('s3 download widened', { ranges: width, at: received });
    launch();
  };

  const hash = createHash('sha256');
  let received = 0;
  try {
    checkPinnedSize(ref, where);
    for (let start = window.start, i = 0; start <= window.end; start += partSize, i++) {
      parts.push(new Part(i, start, Math.min(start + partSize - 1, window.end)));
    }
    log.debug('s3 download started', {
      size: ref.size,
      eTag: ref.eTag,
      ...windowOf(run),
      parts: parts.length,
      partSize,
      concurrency,
    });
    if (signal?.aborted) throw signal.reason;
    launch();
    for (const p of parts) {
      while (p.handed < p.length) {
        if (state.failure !== null) throw state.failure.error;
        if (!p.ready) {
          // Waiting for the first bytes of the first part is latency, not a slow link.
          const since = received > 0 ? performance.now() : null;
          await new Promise<void>((resolve) => (wake = resolve));
          if (since !== null) waited(performance.now() - since);
          continue;
        }
        const chunk = p.take();
        hash.update(chunk);
        received += chunk.byteLength;
        opts.onBytes?.(received);
        yield chunk;
      }
      handing = p.index + 1;
      launch();
    }
    if (state.failure !== null) throw state.failure.error;

    const sha256 = verifyWindow(run, received, hash.digest());
    const res: DownloadResult = { sha256, size: received, resumes: budget.resumes };
    log.debug('s3 download finished', { ...res, parts: parts.length });
    settle.resolve(res);
  } catch (err) {
    settle.reject(err);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // Finished, failed or abandoned: nothing may keep running behind us.
    const over = new Error(`download of ${where} is over`);
    over.name = 'AbortError';
    fail(over);
    settle.abandon(received); // no-op unless the consumer stopped early
  }
}
