/**
 * Streaming download of a pinned S3 object, with resume: the entry point.
 *
 * The bytes are yielded in order as they arrive (straight into the
 * unpacker), hashed and counted on the way. An object larger than one part
 * is fetched as parallel ranged GETs (parallel-download.ts), still yielded
 * in order, with at most `concurrency` parts in memory; a smaller one (or
 * concurrency 1) is one GET streamed through with nothing buffered beyond
 * the chunk in hand. Every GET is pinned and every response checked
 * (get-range.ts). A body that breaks (reset, premature close, stall) is
 * resumed with `Range: bytes=<received>-` (of the object, or of its part).
 * The consumer must treat what it has unpacked as untrusted until `result`
 * resolves: the size and checksum verdict comes last.
 *
 * With `window`, only bytes [start, end] of the pinned object are fetched
 * (one layer blob out of an archive), the same way: in parallel parts when
 * larger than one, hashed in order, every GET pinned and checked.
 */
import { createHash } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { DEFAULT_DOWNLOAD_CONCURRENCY, DEFAULT_DOWNLOAD_PART_BYTES } from '../config.js';
import { ImageError, InternalError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import {
  RetryBudget,
  bodyChunks,
  checkPinnedSize,
  destroyAttempt,
  getRange,
  objectChanged,
  verifyDownload,
  type Attempt,
} from './get-range.js';
import { objectUrl, type ObjectRef } from './object-ref.js';
import { parallelStream } from './parallel-download.js';

export interface DownloadResult {
  /** Hex SHA-256 of the bytes yielded (of the window, when one was given). */
  sha256: string;
  /** Bytes yielded: the object's size, or the window's length. */
  size: number;
  /** How many times the download was resumed after a broken or failed request. */
  resumes: number;
}

export interface DownloadOptions {
  /**
   * Failed attempts in a row that brought no new byte before giving up
   * (default 5). An attempt that delivered bytes resets the count, so a long
   * download over a flaky link keeps going as long as it makes progress.
   */
  maxRetries?: number;
  /** Hard cap on resumes over the whole download, progress or not (default 100). */
  maxResumes?: number;
  /** Base backoff in ms, doubled per consecutive failure, full jitter, capped at 20 s (default 200). */
  backoffMs?: number;
  /**
   * Bytes per ranged GET (default 8 MiB, THINRELAY_DOWNLOAD_PART_SIZE in the
   * agent). Objects up to one part are fetched with a single GET.
   */
  partSize?: number;
  /**
   * Ranged GETs in flight at most, and so parts held in memory at most
   * (default 8, THINRELAY_DOWNLOAD_CONCURRENCY in the agent). The download
   * starts with 2 and opens more only while the consumer waits for bytes
   * (parallel-download.ts). 1 = one streamed GET.
   */
  concurrency?: number;
  /**
   * Only bytes `start`..`end` (inclusive, 0 ≤ start ≤ end < size) of the
   * pinned object. The result's sha256 and size are the window's; the S3
   * full-object checksum can't be checked on part of the object, so the
   * caller checks the window's digest against what it expects (a layer's).
   */
  window?: ByteWindow;
  /** Called after each chunk with the total bytes yielded so far (in order). */
  onBytes?: (total: number) => void;
  signal?: AbortSignal;
  logger?: Logger;
}

/** Bytes `start`..`end` of an object, both inclusive (as in an HTTP Range). */
export interface ByteWindow {
  start: number;
  end: number;
}

export interface Download {
  /**
   * The object's bytes, in order, exactly once. Iterate it once; breaking
   * out (or throwing in the loop) aborts the in-flight request. Errors are
   * thrown from here as well as from `result`.
   */
  chunks: AsyncIterable<Uint8Array>;
  /**
   * Settles once `chunks` is finished: resolves after the last chunk when size
   * and checksum check out; rejects with the same error the iteration threw,
   * or with an AbortError when the consumer stopped early. Never an unhandled
   * rejection if nobody awaits it. Stays pending until `chunks` is iterated.
   */
  result: Promise<DownloadResult>;
}

const DEFAULT_MAX_RETRIES = 5;
const DEFAULT_MAX_RESUMES = 100;
const DEFAULT_BACKOFF_MS = 200;

/**
 * Streams the pinned object version. Errors: OBJECT_CHANGED (412, or a
 * response that doesn't match the pins), OBJECT_NOT_FOUND (deleted since the
 * HEAD), CHECKSUM_MISMATCH (size or S3 SHA-256 differ at the end),
 * TransientError DOWNLOAD_FAILED (retries exhausted), UsageError CONFIG
 * (credentials), the signal's reason when aborted.
 */
export function downloadObject(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions = {},
): Download {
  let resolve!: (r: DownloadResult) => void;
  let reject!: (e: unknown) => void;
  const result = new Promise<DownloadResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The consumer usually fails first and may never await `result`.
  result.catch(() => undefined);
  let settled = false;
  const settle: Settle = {
    resolve: (r) => {
      if (!settled) resolve(r);
      settled = true;
    },
    reject: (e) => {
      if (!settled) reject(e);
      settled = true;
    },
    abandon: (received) => {
      // The consumer stopped iterating (break, return, or a throw in its loop).
      const err = new Error(
        `download of ${objectUrl(ref)} abandoned by its consumer at byte ${received}`,
      );
      err.name = 'AbortError';
      settle.reject(err);
    },
  };

  const partSize = opts.partSize ?? DEFAULT_DOWNLOAD_PART_BYTES;
  const concurrency = opts.concurrency ?? DEFAULT_DOWNLOAD_CONCURRENCY;
  if (!Number.isSafeInteger(partSize) || partSize < 1) {
    throw new RangeError(`downloadObject: partSize must be a positive integer, got ${partSize}`);
  }
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new RangeError(
      `downloadObject: concurrency must be a positive integer, got ${concurrency}`,
    );
  }
  const window = opts.window ?? { start: 0, end: ref.size - 1 };
  if (opts.window !== undefined) checkWindow(opts.window, ref);
  const log = (opts.logger ?? silentLogger).child({ object: objectUrl(ref) });
  const where = objectUrl(ref);
  const budget = new RetryBudget(
    {
      maxRetries: opts.maxRetries ?? DEFAULT_MAX_RETRIES,
      maxResumes: opts.maxResumes ?? DEFAULT_MAX_RESUMES,
      backoffMs: opts.backoffMs ?? DEFAULT_BACKOFF_MS,
    },
    ref,
    where,
    log,
    opts.signal,
  );
  const run: DownloadRun = { client, ref, window, opts, settle, where, log, budget };
  const gen =
    concurrency > 1 && window.end - window.start + 1 > partSize
      ? parallelStream(run, { partSize, concurrency })
      : stream(run);
  let iterated = false;
  const chunks: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      if (iterated) throw new InternalError('downloadObject: chunks can only be iterated once');
      iterated = true;
      return {
        next: () => gen.next(),
        // Also covers a return() before the first next(), when the generator
        // body (and its finally) never ran.
        return: async () => {
          const r = await gen.return(undefined);
          settle.abandon(0);
          return r;
        },
      };
    },
  };
  return { chunks, result };
}

/** What a download generator reports its outcome through. */
export interface Settle {
  resolve: (r: DownloadResult) => void;
  reject: (e: unknown) => void;
  /** Reject with an AbortError unless already settled. */
  abandon: (received: number) => void;
}

/** One download: what both generators work with. */
export interface DownloadRun {
  client: S3Client;
  ref: ObjectRef;
  /** What to fetch: the whole object ([0, size - 1]) unless a window was given. */
  window: ByteWindow;
  opts: DownloadOptions;
  settle: Settle;
  /** objectUrl(ref), for messages. */
  where: string;
  log: Logger;
  budget: RetryBudget;
}

function checkWindow(w: ByteWindow, ref: ObjectRef): void {
  if (
    !Number.isSafeInteger(w.start) ||
    !Number.isSafeInteger(w.end) ||
    w.start < 0 ||
    w.end < w.start ||
    w.end >= ref.size
  ) {
    throw new RangeError(
      `downloadObject: window must satisfy 0 <= start <= end < ${ref.size}, got ${w.start}-${w.end}`,
    );
  }
}

/**
 * The verdict at the end: every byte of the window, and the S3 full-object
 * SHA-256 when the window is the whole object. Returns the hex digest.
 */
export function verifyWindow(run: DownloadRun, received: number, sha256: Buffer): string {
  const { ref, window, where } = run;
  if (window.start === 0 && window.end === ref.size - 1) {
    return verifyDownload(ref, received, sha256, where);
  }
  const length = window.end - window.start + 1;
  if (received !== length) {
    throw new ImageError(
      'CHECKSUM_MISMATCH',
      `download of bytes ${window.start}-${window.end} of ${where} is ${received} bytes, expected ${length}`,
    );
  }
  return sha256.toString('hex');
}

/** The window as one GET, streamed through (resumed from the byte it broke at). */
async function* stream(run: DownloadRun): AsyncGenerator<Uint8Array, void, undefined> {
  const { client, ref, window, opts, settle, where, log, budget } = run;
  const signal = opts.signal;
  const length = window.end - window.start + 1;

  const hash = createHash('sha256');
  let received = 0;
  const position = { failuresInARow: 0 };
  let attempt: Attempt | undefined;

  const onAbort = (): void => attempt?.controller.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  try {
    checkPinnedSize(ref, where);
    log.debug('s3 download started', { size: ref.size, eTag: ref.eTag, ...windowOf(run) });
    let done = false;
    while (!done) {
      if (signal?.aborted) throw signal.reason;
      const start = received;
      attempt = { controller: new AbortController(), body: undefined };
      let res;
      try {
        res = await getRange(client, ref, window.start + start, window.end, attempt, where);
      } catch (err) {
        throw signal?.aborted ? signal.reason : err;
      }
      if (!res.ok) {
        if (signal?.aborted) throw signal.reason;
        await budget.failed(res.error, position, false, received);
        continue;
      }
      let skip = res.skip;
      if (res.body === undefined) {
        if (length === start) {
          done = true;
          continue;
        }
        throw new ImageError('DOWNLOAD_FAILED', `GetObject ${where} returned no body`);
      }

      // A store that ignored Range sends the whole object: drop what comes
      // before the window, stop reading at its end.
      const cut = res.whole && window.end < ref.size - 1;
      const read = { error: null as unknown };
      for await (let chunk of bodyChunks(res.body, read)) {
        if (skip > 0) {
          const drop = Math.min(skip, chunk.byteLength);
          skip -= drop;
          chunk = chunk.subarray(drop);
          if (chunk.byteLength === 0) continue;
        }
        if (received + chunk.byteLength > length) {
          if (!cut) {
            throw objectChanged(where, `sent more than the pinned ${ref.size} bytes`);
          }
          chunk = chunk.subarray(0, length - received);
        }
        hash.update(chunk);
        received += chunk.byteLength;
        opts.onBytes?.(received);
        yield chunk;
        if (cut && received === length) break;
      }
      if (signal?.aborted) throw signal.reason;
      if (read.error === null && received === length) {
        if (cut) destroyAttempt(attempt); // the rest of the object is not ours to read
        done = true;
        continue;
      }
      destroyAttempt(attempt);
      const at = window.start + received;
      const reason =
        read.error ??
        new Error(`response body ended early at byte ${at} of ${ref.size} (premature close)`);
      await budget.failed(reason, position, received > start, at);
    }

    const sha256 = verifyWindow(run, received, hash.digest());
    const res: DownloadResult = { sha256, size: received, resumes: budget.resumes };
    log.debug('s3 download finished', { ...res });
    settle.resolve(res);
  } catch (err) {
    settle.reject(err);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (attempt) destroyAttempt(attempt);
    settle.abandon(received); // no-op unless the consumer stopped early
  }
}

/** The window, for log lines, when it is not the whole object. */
export function windowOf(run: DownloadRun): { window?: string } {
  const { window, ref } = run;
  return window.start === 0 && window.end === ref.size - 1
    ? {}
    : { window: `${window.start}-${window.end}` };
}
