/**
 * What the download worker (download-worker.ts) and the main thread
 * (worker-download.ts) say to each other, and how a typed error crosses the
 * thread boundary as the same typed error (class, code, message, hint).
 */
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import {
  EnvironmentError,
  ImageError,
  InternalError,
  NotFoundError,
  SpaceExhaustedError,
  TemporaryEnvironmentError,
  TransientError,
  UsageError,
  type EnvironmentCode,
  type ImageFailureCode,
  type NotFoundCode,
  type UsageCode,
} from '../errors.js';
import type { LogFields, LogLevel } from '../log.js';
import type { ByteWindow, DownloadResult } from './download.js';
import type { ObjectRef } from './object-ref.js';

/** The worker's start: what to fetch and how. */
export interface WorkerInput {
  recipe: Partial<S3ClientConfig>;
  ref: ObjectRef;
  opts: {
    partSize?: number;
    concurrency?: number;
    maxRetries?: number;
    maxResumes?: number;
    backoffMs?: number;
    window?: ByteWindow;
  };
  /** Bytes handed over and not yet taken by the consumer, at most (plus one slice). */
  readAhead: number;
}

/** Main → worker: the consumer has taken `bytes` in all. */
export interface AckMessage {
  type: 'ack';
  bytes: number;
}

/** Worker → main. */
export type WorkerMessage =
  | { type: 'chunk'; data: ArrayBuffer }
  | { type: 'done'; result: DownloadResult }
  | { type: 'error'; error: SerializedError }
  | { type: 'log'; level: LogLevel; msg: string; fields: LogFields | undefined };

export interface SerializedError {
  kind: string;
  name: string;
  code: string | undefined;
  message: string;
  hint: string | undefined;
  stack: string | undefined;
}

const kinds = [
  ['TransientError', TransientError],
  ['ImageError', ImageError],
  ['UsageError', UsageError],
  ['NotFoundError', NotFoundError],
  ['SpaceExhaustedError', SpaceExhaustedError],
  ['TemporaryEnvironmentError', TemporaryEnvironmentError],
  ['EnvironmentError', EnvironmentError],
  ['InternalError', InternalError],
] as const;

export function serializeError(err: unknown): SerializedError {
  const e = err instanceof Error ? err : new Error(String(err));
  // Subclasses first in `kinds`: the most specific class wins.
  const kind = kinds.find(([, cls]) => e instanceof cls)?.[0] ?? 'Error';
  const typed = e as { code?: unknown; hint?: unknown };
  return {
    kind,
    name: e.name,
    code: typeof typed.code === 'string' ? typed.code : undefined,
    message: e.message,
    hint: typeof typed.hint === 'string' ? typed.hint : undefined,
    stack: e.stack,
  };
}

/** The same typed error on this side of the boundary (an untyped one keeps its name). */
export function deserializeError(s: SerializedError): Error {
  const { code, message, hint } = s;
  let err: Error;
  switch (s.kind) {
    case 'TransientError':
      err = new TransientError(code as ImageFailureCode, message, hint);
      break;
    case 'ImageError':
      err = new ImageError(code as ImageFailureCode, message, hint);
      break;
    case 'UsageError':
      err = new UsageError(code as UsageCode, message, hint);
      break;
    case 'NotFoundError':
      err = new NotFoundError(code as NotFoundCode, message, hint);
      break;
    case 'SpaceExhaustedError':
      err = new SpaceExhaustedError(code as EnvironmentCode, message, hint);
      break;
    case 'TemporaryEnvironmentError':
      err = new TemporaryEnvironmentError(code as EnvironmentCode, message, hint);
      break;
    case 'EnvironmentError':
      err = new EnvironmentError(code as EnvironmentCode, message, hint);
      break;
    case 'InternalError':
      err = new InternalError(message);
      break;
    default:
      err = new Error(message);
      err.name = s.name;
  }
  if (s.stack !== undefined)
    err.stack = `${err.stack ?? ''}\n    --- in the download worker ---\n${s.stack}`;
  return err;
}
