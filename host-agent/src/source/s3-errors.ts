/**
 * Turning AWS SDK v3 errors into thinrelay's typed errors.
 *
 * How the SDK surfaces S3 failures (checked against SDK 3.11xx and s3rver):
 * - a response with an XML error body: `err.name` is the S3 code (NoSuchKey,
 *   NoSuchBucket, PreconditionFailed, InvalidRange, InvalidAccessKeyId, ...)
 *   and `err.$metadata.httpStatusCode` the status;
 * - a HEAD response has no body: 404 becomes name 'NotFound', any other status
 *   (403, 400, 301, 304, 412) becomes name 'Unknown' with only the status;
 * - network failures are plain errors without $metadata (code ECONNRESET,
 *   ECONNREFUSED, ...; name 'TimeoutError' for our socket/connection timeouts);
 * - no credentials anywhere: name 'CredentialsProviderError';
 * - an aborted request: name 'AbortError'.
 */
import { ImageError, TransientError, UsageError, type ThinrelayError } from '../errors.js';
import { objectUrl } from './object-ref.js';

export interface S3ErrorFacts {
  name: string;
  status: number | undefined;
  code: string | undefined;
  message: string;
}

export function s3ErrorFacts(err: unknown): S3ErrorFacts {
  if (!(err instanceof Error)) {
    return { name: 'Error', status: undefined, code: undefined, message: String(err) };
  }
  const e = err as Error & { $metadata?: { httpStatusCode?: unknown }; code?: unknown };
  const status = e.$metadata?.httpStatusCode;
  return {
    name: e.name,
    status: typeof status === 'number' ? status : undefined,
    code: typeof e.code === 'string' ? e.code : undefined,
    message: e.message,
  };
}

export function isAbortError(err: unknown): boolean {
  return err instanceof Error && err.name === 'AbortError';
}

const THROTTLING_OR_SERVER = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'BandwidthLimitExceeded',
  'ProvisionedThroughputExceededException',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'TimeoutError',
]);

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);

/** Network trouble, throttling or a server-side (5xx) error: worth retrying. */
export function isTransientS3Error(err: unknown): boolean {
  if (isAbortError(err)) return false;
  const f = s3ErrorFacts(err);
  if (THROTTLING_OR_SERVER.has(f.name)) return true;
  if (f.status !== undefined) return f.status >= 500 || f.status === 429;
  if (f.code !== undefined && NETWORK_CODES.has(f.code)) return true;
  return /socket hang up|premature close|aborted|network/i.test(f.message);
}

const CREDENTIAL_CODES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'CredentialsProviderError',
  'InvalidClientTokenId',
  'UnrecognizedClientException',
  'AccountProblem',
  'AllAccessDisabled',
  'NotSignedUp',
  'RequestTimeTooSkewed',
]);

const ENDPOINT_CODES = new Set([
  'PermanentRedirect',
  'AuthorizationHeaderMalformed',
  'IllegalLocationConstraintException',
  'InvalidBucketName',
  'InvalidURI',
]);

const CREDENTIALS_HINT =
  'check the AWS credentials the agent runs with (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role) and the host clock';
const ENDPOINT_HINT =
  'check the bucket name, AWS_REGION and AWS_ENDPOINT_URL_S3 (and THINRELAY_S3_FORCE_PATH_STYLE for S3-compatible stores)';

export interface S3ErrorContext {
  bucket: string;
  key: string;
  versionId?: string | null;
  /** What we were doing, for the message: 'HeadObject' or 'GetObject'. */
  operation: string;
}

/** S3 or KMS refused the request: a 403, an AccessDenied body, or a KMS error S3 passes on. */
function isAccessDenied(f: S3ErrorFacts): boolean {
  return (
    f.status === 403 ||
    f.name === 'AccessDenied' ||
    f.name === 'Forbidden' ||
    f.name.startsWith('KMS.') ||
    f.name === 'KMSAccessDeniedException'
  );
}

/**
 * Never "not found": S3 answers 403 for a key it will not show, but also for a
 * missing grant, a bucket or VPC endpoint policy denial and a KMS key policy.
 * A permanent failure of its own (the DLQ, `thinrelay failed`, the failure
 * metric) whose hint names the permission to grant; after the fix, redrive.
 */
function accessDenied(
  f: S3ErrorFacts,
  ctx: S3ErrorContext,
  detail: string,
  cause: { cause: unknown },
): ImageError {
  const where = objectUrl(ctx);
  const arn = `arn:aws:s3:::${ctx.bucket}/${ctx.key}`;
  const kms = f.name.startsWith('KMS') || /\bkms[:.]/i.test(f.message);
  const action = ctx.versionId ? 's3:GetObjectVersion' : 's3:GetObject';
  const hint = kms
    ? `grant the agent's role kms:Decrypt on the bucket's KMS key (in the key policy and in IAM), then redrive the DLQ`
    : `grant the agent's role ${action} on ${arn} (HeadObject and GetObject both need it; a bucket or VPC endpoint policy may deny it), then redrive the DLQ; without s3:ListBucket S3 also answers 403 for a missing key`;
  return new ImageError(
    'ACCESS_DENIED',
    `S3 denied ${ctx.operation} ${where}${kms ? ' (KMS key)' : ''}: ${detail}`,
    hint,
    cause,
  );
}

/**
 * The thinrelay error for an SDK error. TransientError for anything worth
 * retrying; ImageError OBJECT_NOT_FOUND / OBJECT_CHANGED for the object's own
 * state; ImageError ACCESS_DENIED when S3 or KMS refuses; UsageError CONFIG for credentials, bucket and endpoint problems.
 * Abort errors are returned unchanged (the caller rethrows them).
 */
export function mapS3Error(err: unknown, ctx: S3ErrorContext): ThinrelayError | Error {
  if (isAbortError(err)) return err as Error;
  const f = s3ErrorFacts(err);
  const where = objectUrl(ctx);
  const detail = `${f.name}${f.status !== undefined ? ` (HTTP ${f.status})` : ''}: ${f.message}`;
  const cause = { cause: err };

  if (f.name === 'NoSuchBucket') {
    return new UsageError(
      'CONFIG',
      `bucket ${JSON.stringify(ctx.bucket)} does not exist (${ctx.operation} ${where})`,
      ENDPOINT_HINT,
    );
  }
  if (CREDENTIAL_CODES.has(f.name)) {
    return new UsageError(
      'CONFIG',
      `S3 rejected the agent's credentials: ${detail} (${ctx.operation} ${where})`,
      CREDENTIALS_HINT,
    );
  }
  if (ENDPOINT_CODES.has(f.name) || f.status === 301 || f.status === 307) {
    return new UsageError(
      'CONFIG',
      `S3 endpoint or region mismatch: ${detail} (${ctx.operation} ${where})`,
      ENDPOINT_HINT,
    );
  }
  if (
    f.name === 'NoSuchKey' ||
    f.name === 'NoSuchVersion' ||
    f.name === 'NotFound' ||
    f.status === 404 ||
    f.status === 405 /* a delete marker */ ||
    (f.name === 'InvalidArgument' && ctx.versionId)
  ) {
    return new ImageError(
      'OBJECT_NOT_FOUND',
      `object not found: ${where} (bucket ${JSON.stringify(ctx.bucket)}, key ${JSON.stringify(ctx.key)}): ${detail}`,
      'check the bucket and key (and version), or whether the object was deleted',
      cause,
    );
  }
  if (isAccessDenied(f)) return accessDenied(f, ctx, detail, cause);
  if (f.name === 'PreconditionFailed' || f.status === 412) {
    return new ImageError(
      'OBJECT_CHANGED',
      `object changed while it was being read: ${where} no longer has the pinned ETag`,
      'the object was overwritten; the new version is processed from its own notification',
      cause,
    );
  }
  if (f.name === 'InvalidRange' || f.status === 416) {
    return new ImageError(
      'OBJECT_CHANGED',
      `object changed while it was being read: ${where} is shorter than when it was pinned`,
      'the object was overwritten; the new version is processed from its own notification',
      cause,
    );
  }
  if (isTransientS3Error(err)) {
    return new TransientError(
      'DOWNLOAD_FAILED',
      `${ctx.operation} ${where} failed: ${detail}`,
      'a network or S3 service problem; the agent retries it (exit 75: run the command again later)',
      cause,
    );
  }
  return new ImageError(
    'DOWNLOAD_FAILED',
    `${ctx.operation} ${where} failed: ${detail}`,
    undefined,
    cause,
  );
}
