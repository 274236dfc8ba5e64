/**
 * Turning AWS SDK v3 SQS errors into thinrelay's typed errors, for the
 * operator commands (redrive, dlq peek).
 *
 * How the SDK surfaces SQS failures (checked against SDK 3.11xx and
 * local-aws-sqs 2.x, JSON protocol): `err.name` is the error shape
 * (QueueDoesNotExist, InvalidParameterValue, ResourceNotFoundException, ...),
 * `err.Code` the query-compatible code when the service sends one
 * (AWS.SimpleQueueService.NonExistentQueue), `$metadata.httpStatusCode` the
 * status; network failures are plain errors with `code` ECONNREFUSED etc.
 */
import {
  EnvironmentError,
  NotFoundError,
  UsageError,
  type EnvironmentCode,
  type ThinrelayError,
} from '../errors.js';

export interface SqsErrorFacts {
  name: string;
  /** Query-protocol code (err.Code) when present, else undefined. */
  awsCode: string | undefined;
  /** Node's network error code (ECONNREFUSED, ...). */
  code: string | undefined;
  status: number | undefined;
  message: string;
}

export function sqsErrorFacts(err: unknown): SqsErrorFacts {
  if (!(err instanceof Error)) {
    return {
      name: 'Error',
      awsCode: undefined,
      code: undefined,
      status: undefined,
      message: String(err),
    };
  }
  const e = err as Error & {
    Code?: unknown;
    code?: unknown;
    $metadata?: { httpStatusCode?: unknown };
  };
  const status = e.$metadata?.httpStatusCode;
  return {
    name: e.name,
    awsCode: typeof e.Code === 'string' ? e.Code : undefined,
    code: typeof e.code === 'string' ? e.code : undefined,
    status: typeof status === 'number' ? status : undefined,
    message: e.message,
  };
}

const NOT_FOUND = new Set([
  'QueueDoesNotExist',
  'AWS.SimpleQueueService.NonExistentQueue',
  'NonExistentQueue',
]);

const ACCESS = new Set([
  'AccessDenied',
  'AccessDeniedException',
  'InvalidClientTokenId',
  'UnrecognizedClientException',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidSecurity',
  'CredentialsProviderError',
  'KmsAccessDenied',
]);

const UNREACHABLE_NAMES = new Set([
  'TimeoutError',
  'RequestThrottled',
  'ThrottlingException',
  'ServiceUnavailable',
  'InternalError',
  'InternalFailure',
]);

/** Node's codes for a connection that failed or broke (any AWS service). */
export const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);

export function isSqsNotFound(err: unknown): boolean {
  const f = sqsErrorFacts(err);
  return NOT_FOUND.has(f.name) || (f.awsCode !== undefined && NOT_FOUND.has(f.awsCode));
}

const ENDPOINT_HINT =
  'check the queue URL, AWS_REGION and AWS_ENDPOINT_URL_SQS, and that this machine can reach SQS';

/** `what` names the request and its target, e.g. "GetQueueAttributes https://sqs…/dlq". */
export function mapSqsError(err: unknown, what: string): ThinrelayError {
  const f = sqsErrorFacts(err);
  const detail = `${f.awsCode ?? f.code ?? f.name}${f.status !== undefined ? ` (HTTP ${f.status})` : ''}: ${f.message}`;
  const env = (code: EnvironmentCode, message: string, hint: string): EnvironmentError =>
    new EnvironmentError(code, message, hint, { cause: err });

  if (isSqsNotFound(err)) {
    return new NotFoundError('QUEUE_NOT_FOUND', `${what}: the queue does not exist`, ENDPOINT_HINT);
  }
  if (
    ACCESS.has(f.name) ||
    (f.awsCode !== undefined && ACCESS.has(f.awsCode)) ||
    f.status === 403
  ) {
    return env(
      'QUEUE_ACCESS_DENIED',
      `${what}: SQS refused the request: ${detail}`,
      'check the AWS credentials (AWS_PROFILE, instance role, AWS_ACCESS_KEY_ID) and that they may use this queue',
    );
  }
  if (
    UNREACHABLE_NAMES.has(f.name) ||
    (f.code !== undefined && NETWORK_CODES.has(f.code)) ||
    (f.status !== undefined && f.status >= 500)
  ) {
    return env('QUEUE_UNREACHABLE', `${what}: SQS unreachable: ${detail}`, ENDPOINT_HINT);
  }
  if (f.name === 'InvalidAddress' || f.awsCode === 'InvalidAddress') {
    return new UsageError('USAGE', `${what}: not a valid queue address: ${detail}`, ENDPOINT_HINT);
  }
  return env('QUEUE_REQUEST_FAILED', `${what} failed: ${detail}`, ENDPOINT_HINT);
}

/** The error a queue URL argument gets before any request is made. */
export function checkQueueUrl(url: string, flag: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError('USAGE', `${flag} is not a URL: ${JSON.stringify(url)}`, queueUrlHint);
  }
  if (!/^https?:$/.test(parsed.protocol) || parsed.pathname.split('/').filter(Boolean).length < 2) {
    throw new UsageError(
      'USAGE',
      `${flag} is not an SQS queue URL: ${JSON.stringify(url)}`,
      queueUrlHint,
    );
  }
  return url;
}

const queueUrlHint = 'expected https://sqs.<region>.amazonaws.com/<account>/<queue name>';
