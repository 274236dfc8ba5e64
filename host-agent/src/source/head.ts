/**
 * HeadObject: pin an object (ETag, version, size, checksum) before reading it.
 */
import {
  GetObjectCommand,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { ImageError, TransientError, type ThinrelayError } from '../errors.js';
import { fullObjectSha256, objectUrl, type ObjectRef } from './object-ref.js';
import { mapS3Error, s3ErrorFacts, type S3ErrorContext } from './s3-errors.js';

export interface HeadOptions {
  /** Objects larger than this fail with LIMIT_BLOB_SIZE before any byte is read. */
  maxBlobBytes: number;
  /** Pin this version instead of the current one. */
  versionId?: string | null;
  signal?: AbortSignal;
}

/**
 * HeadObject (with ChecksumMode ENABLED, to learn S3's SHA-256 when it has one).
 *
 * Errors: missing key/version (404) → ImageError OBJECT_NOT_FOUND; refused
 * (403, KMS) → ImageError ACCESS_DENIED; size > maxBlobBytes → ImageError
 * LIMIT_BLOB_SIZE; network, 5xx, throttling → TransientError DOWNLOAD_FAILED;
 * bad credentials, missing bucket, wrong region/endpoint → UsageError CONFIG
 * with a hint; an aborted signal → its reason.
 *
 * A HEAD error response has no body, so a 404 can't tell a missing key from a
 * missing bucket, nor a 403 bad credentials from a forbidden key. On a 4xx we
 * therefore ask once more with a one-byte GET, whose error body names the
 * cause, and classify that.
 */
export async function headObject(
  client: S3Client,
  bucket: string,
  key: string,
  opts: HeadOptions,
): Promise<ObjectRef> {
  const versionId = opts.versionId ?? null;
  const ctx: S3ErrorContext = { bucket, key, versionId, operation: 'HeadObject' };
  let out: HeadObjectCommandOutput;
  try {
    out = await client.send(
      new HeadObjectCommand({
        Bucket: bucket,
        Key: key,
        ...(versionId !== null ? { VersionId: versionId } : {}),
        ChecksumMode: 'ENABLED',
      }),
      { abortSignal: opts.signal },
    );
  } catch (err) {
    throwIfAborted(opts.signal, err);
    throw await explainHeadError(client, err, ctx, opts.signal);
  }

  const where = objectUrl({ bucket, key, versionId });
  if (out.DeleteMarker === true) {
    throw new ImageError('OBJECT_NOT_FOUND', `object not found: ${where} is a delete marker`);
  }
  const size = out.ContentLength;
  if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
    throw new ImageError(
      'DOWNLOAD_FAILED',
      `HeadObject ${where} returned no usable Content-Length (${String(size)})`,
    );
  }
  if (!out.ETag) {
    throw new ImageError(
      'DOWNLOAD_FAILED',
      `HeadObject ${where} returned no ETag; the object can't be pinned`,
      'the S3-compatible store must return ETags',
    );
  }
  if (size > opts.maxBlobBytes) {
    throw new ImageError(
      'LIMIT_BLOB_SIZE',
      `object ${where} is ${size} bytes, over the ${opts.maxBlobBytes}-byte limit`,
      'raise the blob size limit in the agent configuration if this image is legitimate',
    );
  }
  return {
    bucket,
    key,
    versionId: out.VersionId ?? versionId,
    eTag: out.ETag,
    size,
    checksumSha256: fullObjectSha256(out.ChecksumSHA256, out.ChecksumType),
    lastModified: out.LastModified ? out.LastModified.toISOString() : null,
  };
}

function throwIfAborted(signal: AbortSignal | undefined, err?: unknown): void {
  if (signal?.aborted) throw signal.reason ?? err;
}

async function explainHeadError(
  client: S3Client,
  err: unknown,
  ctx: S3ErrorContext,
  signal: AbortSignal | undefined,
): Promise<ThinrelayError | Error> {
  const { status } = s3ErrorFacts(err);
  const clientError = status !== undefined && status >= 400 && status < 500 && status !== 429;
  if (!clientError) return mapS3Error(err, ctx);

  // A one-byte GET: its error response has a body with the real S3 code.
  try {
    const probe = await client.send(
      new GetObjectCommand({
        Bucket: ctx.bucket,
        Key: ctx.key,
        ...(ctx.versionId ? { VersionId: ctx.versionId } : {}),
        Range: 'bytes=0-0',
      }),
      { abortSignal: signal },
    );
    destroyBody(probe.Body);
  } catch (probeErr) {
    throwIfAborted(signal, probeErr);
    const probeFacts = s3ErrorFacts(probeErr);
    // A 416 means the object exists but is empty: the HEAD failure stands.
    if (probeFacts.status !== 416) return mapS3Error(probeErr, ctx);
  }
  // The GET worked where the HEAD failed: the object appeared in between, or
  // the store treats HEAD differently. Either way, worth another try later.
  const mapped = mapS3Error(err, ctx);
  if (mapped instanceof ImageError && mapped.code === 'OBJECT_NOT_FOUND') {
    return new TransientError(
      'DOWNLOAD_FAILED',
      `HeadObject ${objectUrl(ctx)} failed (${mapped.message}) but the object is readable`,
      'the object probably appeared meanwhile; the agent retries it (exit 75: run the command again later)',
      { cause: err },
    );
  }
  return mapped;
}

function destroyBody(body: unknown): void {
  if (body && typeof body === 'object' && 'destroy' in body && typeof body.destroy === 'function') {
    (body as { destroy(): void }).destroy();
  }
}
