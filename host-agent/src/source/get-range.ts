/**
 * One pinned GetObject for a byte range, and the checks every response must
 * pass, shared by the single-stream and the parallel ranged download. Every
 * GET carries the pins (VersionId when known, always If-Match: ETag) and
 * every response is checked against them too (ETag, VersionId,
 * Content-Length / Content-Range), because some S3-compatible stores ignore
 * If-Match. Also the retry budget both downloads spend: backoff with full
 * jitter, a cap on failures in a row without progress and on resumes overall.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3';
import { ImageError, TransientError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { sameETag } from '../../../schema/etag.js';
import type { ObjectRef } from './object-ref.js';
import { mapS3Error } from './s3-errors.js';

const CHANGED_HINT =
  'the object was overwritten while it was read; the new version is processed from its own notification';

export function objectChanged(where: string, what: string): ImageError {
  return new ImageError(
    'OBJECT_CHANGED',
    `object changed while it was being read: ${where} ${what}`,
    CHANGED_HINT,
  );
}

/** One GET in flight: abort it (and close its socket) with `destroyAttempt`. */
export interface Attempt {
  controller: AbortController;
  body: GetObjectCommandOutput['Body'] | undefined;
}

export type RangeResponse =
  | {
      ok: true;
      body: AsyncIterable<Uint8Array> | undefined;
      /** Leading bytes to drop: non-zero only when a store ignored our Range. */
      skip: number;
      /** The answer is the whole object (200), not the range asked for. */
      whole: boolean;
    }
  /** A failure worth retrying (network, throttling, 5xx): the mapped error is a TransientError. */
  | { ok: false; error: unknown };

/**
 * GET bytes `start`..`end` (inclusive; `end` = size - 1 for "to the end",
 * sent as an open range, or no Range at all from 0) of the pinned version.
 * Throws what can't be retried (OBJECT_CHANGED, OBJECT_NOT_FOUND, CONFIG…);
 * returns `{ ok: false }` for what can.
 */
export async function getRange(
  client: S3Client,
  ref: ObjectRef,
  start: number,
  end: number,
  attempt: Attempt,
  where: string,
): Promise<RangeResponse> {
  const toEnd = end === ref.size - 1;
  const range = toEnd ? (start > 0 ? `bytes=${start}-` : undefined) : `bytes=${start}-${end}`;
  let out: GetObjectCommandOutput;
  try {
    out = await client.send(
      new GetObjectCommand({
        Bucket: ref.bucket,
        Key: ref.key,
        ...(ref.versionId !== null ? { VersionId: ref.versionId } : {}),
        IfMatch: ref.eTag,
        ...(range !== undefined ? { Range: range } : {}),
      }),
      { abortSignal: attempt.controller.signal },
    );
  } catch (err) {
    // Our own abort (consumer gone, signal, another range failed): the caller decides.
    if (attempt.controller.signal.aborted) throw err;
    const mapped = mapS3Error(err, {
      bucket: ref.bucket,
      key: ref.key,
      versionId: ref.versionId,
      operation: 'GetObject',
    });
    if (!(mapped instanceof TransientError)) throw mapped;
    return { ok: false, error: err };
  }
  attempt.body = out.Body;
  const skip = checkResponse(out, ref, start, end, range ?? `bytes=${start}-`, where);
  const whole = out.$metadata.httpStatusCode !== 206 && out.ContentRange === undefined;
  const body = out.Body as AsyncIterable<Uint8Array> | undefined;
  if (body !== undefined && typeof body[Symbol.asyncIterator] !== 'function') {
    throw new ImageError('DOWNLOAD_FAILED', `GetObject ${where} returned no readable body`);
  }
  return { ok: true, body, skip, whole };
}

/**
 * Checks a response against the pins and the requested range; returns how
 * many leading bytes to drop (non-zero only when a store answered a ranged
 * request with the whole object).
 */
function checkResponse(
  out: GetObjectCommandOutput,
  ref: ObjectRef,
  start: number,
  end: number,
  asked: string,
  where: string,
): number {
  if (out.ETag !== undefined && !sameETag(out.ETag, ref.eTag)) {
    throw objectChanged(where, `has ETag ${out.ETag}, pinned ${ref.eTag}`);
  }
  if (ref.versionId !== null && out.VersionId !== undefined && out.VersionId !== ref.versionId) {
    throw objectChanged(where, `has version ${out.VersionId}, pinned ${ref.versionId}`);
  }
  const status = out.$metadata.httpStatusCode;
  const range = out.ContentRange !== undefined ? parseContentRange(out.ContentRange) : null;
  if (status === 206 || range !== null) {
    if (range === null) throw objectChanged(where, `answered with an unreadable Content-Range`);
    if (range.total !== null && range.total !== ref.size) {
      throw objectChanged(where, `is ${range.total} bytes, pinned ${ref.size}`);
    }
    if (range.start !== start || range.end !== end) {
      throw objectChanged(
        where,
        `answered bytes ${range.start}-${range.end} to a request for ${asked} of ${ref.size}`,
      );
    }
    return 0;
  }
  // A whole-object answer (first request, or a store that ignored Range).
  if (out.ContentLength !== undefined && out.ContentLength !== ref.size) {
    throw objectChanged(where, `is ${out.ContentLength} bytes, pinned ${ref.size}`);
  }
  return start;
}

function parseContentRange(
  value: string,
): { start: number; end: number; total: number | null } | null {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim());
  if (!m || m[1] === undefined || m[2] === undefined || m[3] === undefined) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) };
}

/**
 * A response body's chunks. A failed read (reset, premature close, socket
 * timeout) ends them and is left in `outcome.error`: the caller resumes it.
 */
export async function* bodyChunks(
  body: AsyncIterable<Uint8Array>,
  outcome: { error: unknown },
): AsyncGenerator<Uint8Array, void, undefined> {
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    let next: IteratorResult<Uint8Array>;
    try {
      next = await it.next();
    } catch (err) {
      outcome.error = err;
      return;
    }
    if (next.done) return;
    yield next.value;
  }
}

/** Abort the request and destroy its body: the socket is closed, not pooled. */
export function destroyAttempt(attempt: Attempt): void {
  const body = attempt.body as { destroy?: (err?: Error) => void; destroyed?: boolean } | undefined;
  if (body && typeof body.destroy === 'function' && body.destroyed !== true) body.destroy();
  attempt.controller.abort();
}

export interface RetryOptions {
  maxRetries: number;
  maxResumes: number;
  backoffMs: number;
}

const MAX_BACKOFF_MS = 20_000;

/**
 * The retry budget of one download. Each stream of bytes (the whole object,
 * or one range) keeps its own count of failures in a row; resumes are counted
 * over the whole download.
 */
export class RetryBudget {
  resumes = 0;

  constructor(
    private readonly opts: RetryOptions,
    private readonly ref: ObjectRef,
    private readonly where: string,
    private readonly log: Logger,
    private readonly signal: AbortSignal | undefined,
  ) {}

  /**
   * Record a failed attempt of `stream` (which was at byte `at` of the
   * object), then wait out the backoff; throws TransientError
   * DOWNLOAD_FAILED when the budget is spent, the signal's reason when aborted.
   */
  async failed(
    err: unknown,
    stream: { failuresInARow: number },
    progressed: boolean,
    at: number,
    context: Record<string, unknown> = {},
    /** What cuts the backoff short (default: the download's signal). */
    signal: AbortSignal | undefined = this.signal,
  ): Promise<void> {
    stream.failuresInARow = progressed ? 1 : stream.failuresInARow + 1;
    if (stream.failuresInARow > this.opts.maxRetries || this.resumes >= this.opts.maxResumes) {
      throw new TransientError(
        'DOWNLOAD_FAILED',
        `download of ${this.where} failed after ${this.resumes} resume(s) at byte ${at} of ${this.ref.size}: ${errorMessage(err)}`,
        'a network or S3 service problem; the agent retries it (exit 75: run the command again later)',
        { cause: err },
      );
    }
    const delayMs = Math.round(
      Math.random() *
        Math.min(MAX_BACKOFF_MS, this.opts.backoffMs * 2 ** (stream.failuresInARow - 1)),
    );
    this.resumes += 1;
    this.log.warn('s3 download interrupted, resuming', {
      ...context,
      received: at,
      size: this.ref.size,
      resume: this.resumes,
      failuresInARow: stream.failuresInARow,
      delayMs,
      error: errorMessage(err),
    });
    try {
      await sleep(delayMs, undefined, { signal });
    } catch (sleepErr) {
      throw signal?.aborted ? signal.reason : sleepErr;
    }
  }
}

/**
 * The verdict at the end of a download: every pinned byte, and the S3
 * full-object SHA-256 when there is one. Returns the hex digest.
 */
export function verifyDownload(
  ref: ObjectRef,
  received: number,
  sha256: Buffer,
  where: string,
): string {
  if (received !== ref.size) {
    throw new ImageError(
      'CHECKSUM_MISMATCH',
      `download of ${where} is ${received} bytes, expected ${ref.size}`,
    );
  }
  if (ref.checksumSha256 !== null && sha256.toString('base64') !== ref.checksumSha256) {
    throw new ImageError(
      'CHECKSUM_MISMATCH',
      `SHA-256 of ${where} is ${sha256.toString('base64')}, S3 says ${ref.checksumSha256}`,
      'the object is corrupt in the store or was altered in transit',
    );
  }
  return sha256.toString('hex');
}

/** A size that can't be a real object's is refused before any request. */
export function checkPinnedSize(ref: ObjectRef, where: string): void {
  if (!Number.isSafeInteger(ref.size) || ref.size < 0) {
    throw new ImageError('DOWNLOAD_FAILED', `invalid pinned size ${ref.size} for ${where}`);
  }
}
