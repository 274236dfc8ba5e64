/**
 * Streaming download of a pinned S3 object, with resume.
 *
 * The bytes are yielded as they arrive (straight into the unpacker), hashed
 * and counted on the way; nothing is buffered beyond the chunk in hand. Every
 * GET carries the pins (VersionId when known, always If-Match: ETag), and
 * every response is checked against them too (ETag, VersionId, Content-Length
 * / Content-Range), because some S3-compatible stores ignore If-Match. A body
 * that breaks (reset, premature close, stall) is resumed with
 * `Range: bytes=<received>-`. The consumer must treat what it has unpacked as
 * untrusted until `result` resolves: the size and checksum verdict comes last.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3';
import { ImageError, TransientError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { objectUrl, sameETag, type ObjectRef } from './object-ref.js';
import { mapS3Error } from './s3-errors.js';

export interface DownloadResult {
  /** Hex SHA-256 of the bytes yielded. */
  sha256: string;
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
  /** Called after each chunk with the total bytes received so far. */
  onBytes?: (total: number) => void;
  signal?: AbortSignal;
  logger?: Logger;
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
const MAX_BACKOFF_MS = 20_000;

const CHANGED_HINT =
  'the object was overwritten while it was read; the new version is processed from its own notification';

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

  const gen = stream(client, ref, opts, settle);
  let iterated = false;
  const chunks: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      if (iterated) throw new Error('downloadObject: chunks can only be iterated once');
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

interface Settle {
  resolve: (r: DownloadResult) => void;
  reject: (e: unknown) => void;
  /** Reject with an AbortError unless already settled. */
  abandon: (received: number) => void;
}

interface Attempt {
  controller: AbortController;
  body: GetObjectCommandOutput['Body'] | undefined;
}

async function* stream(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions,
  settle: Settle,
): AsyncGenerator<Uint8Array, void, undefined> {
  const maxRetries = opts.maxRetries ?? DEFAULT_MAX_RETRIES;
  const maxResumes = opts.maxResumes ?? DEFAULT_MAX_RESUMES;
  const backoffMs = opts.backoffMs ?? DEFAULT_BACKOFF_MS;
  const log = (opts.logger ?? silentLogger).child({ object: objectUrl(ref) });
  const where = objectUrl(ref);
  const signal = opts.signal;

  const hash = createHash('sha256');
  let received = 0;
  let resumes = 0;
  let failuresInARow = 0;
  let attempt: Attempt | undefined;

  const onAbort = (): void => attempt?.controller.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  /** Record a failed attempt; throws when the retry budget is spent. */
  const failed = async (err: unknown, progressed: boolean): Promise<void> => {
    failuresInARow = progressed ? 1 : failuresInARow + 1;
    if (failuresInARow > maxRetries || resumes >= maxResumes) {
      throw new TransientError(
        'DOWNLOAD_FAILED',
        `download of ${where} failed after ${resumes} resume(s) at byte ${received} of ${ref.size}: ${errorMessage(err)}`,
        'a network or S3 service problem; the agent retries it (exit 75: run the command again later)',
        { cause: err },
      );
    }
    const delayMs = Math.round(
      Math.random() * Math.min(MAX_BACKOFF_MS, backoffMs * 2 ** (failuresInARow - 1)),
    );
    resumes += 1;
    log.warn('s3 download interrupted, resuming', {
      received,
      size: ref.size,
      resume: resumes,
      failuresInARow,
      delayMs,
      error: errorMessage(err),
    });
    try {
      await sleep(delayMs, undefined, { signal });
    } catch (sleepErr) {
      throw signal?.aborted ? signal.reason : sleepErr;
    }
  };

  try {
    if (!Number.isSafeInteger(ref.size) || ref.size < 0) {
      throw new ImageError('DOWNLOAD_FAILED', `invalid pinned size ${ref.size} for ${where}`);
    }
    log.debug('s3 download started', { size: ref.size, eTag: ref.eTag });
    let done = false;
    while (!done) {
      if (signal?.aborted) throw signal.reason;
      const start = received;
      attempt = { controller: new AbortController(), body: undefined };
      let out: GetObjectCommandOutput;
      try {
        out = await client.send(
          new GetObjectCommand({
            Bucket: ref.bucket,
            Key: ref.key,
            ...(ref.versionId !== null ? { VersionId: ref.versionId } : {}),
            IfMatch: ref.eTag,
            ...(start > 0 ? { Range: `bytes=${start}-` } : {}),
          }),
          { abortSignal: attempt.controller.signal },
        );
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const mapped = mapS3Error(err, {
          bucket: ref.bucket,
          key: ref.key,
          versionId: ref.versionId,
          operation: 'GetObject',
        });
        if (!(mapped instanceof TransientError)) throw mapped;
        await failed(err, false);
        continue;
      }
      attempt.body = out.Body;
      // Bytes to drop before yielding: only when a store ignored our Range.
      let skip = checkResponse(out, ref, start, where);
      const body = out.Body as AsyncIterable<Uint8Array> | undefined;
      if (body === undefined || typeof body[Symbol.asyncIterator] !== 'function') {
        if (ref.size === start) {
          done = true;
          continue;
        }
        throw new ImageError('DOWNLOAD_FAILED', `GetObject ${where} returned no body`);
      }

      const it = body[Symbol.asyncIterator]();
      let streamErr: unknown = null;
      for (;;) {
        let next: IteratorResult<Uint8Array>;
        try {
          next = await it.next();
        } catch (err) {
          streamErr = err;
          break;
        }
        if (next.done) break;
        let chunk = next.value;
        if (skip > 0) {
          const drop = Math.min(skip, chunk.byteLength);
          skip -= drop;
          chunk = chunk.subarray(drop);
          if (chunk.byteLength === 0) continue;
        }
        if (received + chunk.byteLength > ref.size) {
          throw new ImageError(
            'OBJECT_CHANGED',
            `object changed while it was being read: ${where} sent more than the pinned ${ref.size} bytes`,
            CHANGED_HINT,
          );
        }
        hash.update(chunk);
        received += chunk.byteLength;
        opts.onBytes?.(received);
        yield chunk;
      }
      if (signal?.aborted) throw signal.reason;
      if (streamErr === null && received === ref.size) {
        done = true;
        continue;
      }
      destroyBody(attempt);
      const reason =
        streamErr ??
        new Error(`response body ended early at byte ${received} of ${ref.size} (premature close)`);
      await failed(reason, received > start);
    }

    const sha256 = hash.digest();
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
    const res: DownloadResult = { sha256: sha256.toString('hex'), size: received, resumes };
    log.debug('s3 download finished', { ...res });
    settle.resolve(res);
  } catch (err) {
    settle.reject(err);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (attempt) destroyBody(attempt);
    settle.abandon(received); // no-op unless the consumer stopped early
  }
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
  where: string,
): number {
  const changed = (what: string): ImageError =>
    new ImageError(
      'OBJECT_CHANGED',
      `object changed while it was being read: ${where} ${what}`,
      CHANGED_HINT,
    );
  if (out.ETag !== undefined && !sameETag(out.ETag, ref.eTag)) {
    throw changed(`has ETag ${out.ETag}, pinned ${ref.eTag}`);
  }
  if (ref.versionId !== null && out.VersionId !== undefined && out.VersionId !== ref.versionId) {
    throw changed(`has version ${out.VersionId}, pinned ${ref.versionId}`);
  }
  const status = out.$metadata.httpStatusCode;
  const range = out.ContentRange !== undefined ? parseContentRange(out.ContentRange) : null;
  if (status === 206 || range !== null) {
    if (range === null) throw changed(`answered with an unreadable Content-Range`);
    if (range.total !== null && range.total !== ref.size) {
      throw changed(`is ${range.total} bytes, pinned ${ref.size}`);
    }
    if (range.start !== start || range.end !== ref.size - 1) {
      throw changed(
        `answered bytes ${range.start}-${range.end} to a request for bytes=${start}- of ${ref.size}`,
      );
    }
    return 0;
  }
  // A whole-object answer (first request, or a store that ignored Range).
  if (out.ContentLength !== undefined && out.ContentLength !== ref.size) {
    throw changed(`is ${out.ContentLength} bytes, pinned ${ref.size}`);
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

/** Abort the request and destroy its body: the socket is closed, not pooled. */
function destroyBody(attempt: Attempt): void {
  const body = attempt.body as { destroy?: (err?: Error) => void; destroyed?: boolean } | undefined;
  if (body && typeof body.destroy === 'function' && body.destroyed !== true) body.destroy();
  attempt.controller.abort();
}
