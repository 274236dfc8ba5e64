/**
 * downloadObject on its own core: the same Download (chunks in order, the
 * verdict last), fetched and hashed by a worker thread (download-worker.ts)
 * so the main thread only parses tar and writes files. The worker hands
 * over transferred slices and holds back when the consumer is `readAhead`
 * bytes behind. Its errors arrive as the same typed errors; a worker that
 * dies (a crash, out of memory) is the host's fault, DOWNLOAD_WORKER_FAILED,
 * never the image's. Stopping early (break, the signal) terminates the
 * worker, which closes its sockets. A client the worker can't rebuild (not
 * made by createS3Client from plain data) downloads on this thread instead.
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { S3Client } from '@aws-sdk/client-s3';
import { InternalError, TemporaryEnvironmentError, errorMessage } from '../errors.js';
import { silentLogger } from '../log.js';
import {
  downloadObject,
  type Download,
  type DownloadOptions,
  type DownloadResult,
} from './download.js';
import { deserializeError, type WorkerInput, type WorkerMessage } from './download-protocol.js';
import { objectUrl, type ObjectRef } from './object-ref.js';
import { clientRecipe } from './s3-client.js';

/** Set by the CLI bundle (scripts/bundle-cli.mjs): the worker entry's file name beside it. */
declare const THINRELAY_DOWNLOAD_WORKER: string | undefined;

/** Bytes handed to the main thread and not yet taken, at most (default): four slices. */
export const DEFAULT_READ_AHEAD_BYTES = 4 * 1024 * 1024;

/**
 * THINRELAY_DOWNLOAD_THREAD=0 keeps every download on the main thread (for
 * comparison), =1 puts every one on a worker; unset, objects of
 * `threadMinBytes` or more get a worker.
 */
export const DOWNLOAD_THREAD_ENV = 'THINRELAY_DOWNLOAD_THREAD';

/**
 * Below this a download stays on the main thread: a worker loads its own S3
 * client (about 0.1–0.3 s of start-up on this machine), which a small object's
 * whole download does not repay.
 */
export const DEFAULT_THREAD_MIN_BYTES = 64 * 1024 * 1024;

function workerEntry(): URL {
  if (typeof THINRELAY_DOWNLOAD_WORKER !== 'string') {
    return new URL('./download-worker.js', import.meta.url);
  }
  // Bundled: this code sits in the entry file or in chunks/ beside it.
  for (const rel of [`./${THINRELAY_DOWNLOAD_WORKER}`, `../${THINRELAY_DOWNLOAD_WORKER}`]) {
    const url = new URL(rel, import.meta.url);
    if (existsSync(url)) return url;
  }
  throw new InternalError(
    `the download worker ${THINRELAY_DOWNLOAD_WORKER} is missing from the bundle`,
  );
}

export function downloadInWorker(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions & { readAhead?: number; threadMinBytes?: number } = {},
): Download {
  const recipe = clientRecipe(client);
  const mode = process.env[DOWNLOAD_THREAD_ENV];
  const small = opts.threadMinBytes !== undefined && ref.size < opts.threadMinBytes;
  if (recipe === null || mode === '0' || (mode !== '1' && small)) {
    return downloadObject(client, ref, opts);
  }
  const log = opts.logger ?? silentLogger;
  const signal = opts.signal;
  const input: WorkerInput = {
    recipe,
    ref,
    opts: {
      partSize: opts.partSize,
      concurrency: opts.concurrency,
      maxRetries: opts.maxRetries,
      maxResumes: opts.maxResumes,
      backoffMs: opts.backoffMs,
      window: opts.window,
    },
    readAhead: opts.readAhead ?? DEFAULT_READ_AHEAD_BYTES,
  };

  let resolve!: (r: DownloadResult) => void;
  let reject!: (e: unknown) => void;
  const result = new Promise<DownloadResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  result.catch(() => undefined);

  const queue: Uint8Array[] = [];
  const state: {
    /** The worker's verdict, once it sent it. */
    done: DownloadResult | null;
    /** The verdict handed to the consumer, after its last chunk. */
    resolved: boolean;
    failure: { error: unknown } | null;
    over: boolean;
  } = { done: null, resolved: false, failure: null, over: false };
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };

  const worker = new Worker(workerEntry(), { workerData: input });
  const stopWorker = (): void => {
    state.over = true;
    signal?.removeEventListener('abort', onAbort);
    void worker.terminate();
  };
  const fail = (error: unknown): void => {
    if (state.failure !== null || state.resolved) return;
    state.failure = { error };
    queue.length = 0; // nothing past a failure is handed over
    reject(error);
    stopWorker();
    notify();
  };
  const onAbort = (): void => fail(signal?.reason);
  if (signal?.aborted) queueMicrotask(onAbort);
  else signal?.addEventListener('abort', onAbort, { once: true });

  worker.on('message', (m: WorkerMessage) => {
    if (state.failure !== null) return;
    switch (m.type) {
      case 'chunk':
        queue.push(Buffer.from(m.data));
        break;
      case 'done':
        state.done = m.result;
        break;
      case 'error':
        fail(deserializeError(m.error));
        break;
      case 'log':
        log[m.level](m.msg, m.fields);
        return;
    }
    notify();
  });
  const crashed = (why: string, cause?: unknown): void => {
    if (state.done !== null) return; // finished: its exit is the normal end
    fail(
      new TemporaryEnvironmentError(
        'DOWNLOAD_WORKER_FAILED',
        `the download worker of ${objectUrl(ref)} died (${why}) after ${received} byte(s) handed over`,
        'a fault of this host (memory, a bug), not of the image: the agent retries it (run the command again)',
        { cause },
      ),
    );
  };
  worker.on('error', (err: unknown) => crashed(errorMessage(err), err));
  worker.on('exit', (code) => crashed(`exit code ${code}`));

  let received = 0;
  let iterated = false;
  const chunks: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      if (iterated) throw new InternalError('downloadInWorker: chunks can only be iterated once');
      iterated = true;
      return {
        next: async (): Promise<IteratorResult<Uint8Array>> => {
          // The consumer is back for more: what it took is no longer held ahead of it.
          if (!state.over) worker.postMessage({ type: 'ack', bytes: received });
          for (;;) {
            if (state.failure !== null) throw state.failure.error;
            const chunk = queue.shift();
            if (chunk !== undefined) {
              received += chunk.byteLength;
              opts.onBytes?.(received);
              return { value: chunk, done: false };
            }
            if (state.done !== null) {
              state.resolved = true;
              signal?.removeEventListener('abort', onAbort);
              resolve(state.done);
              return { value: undefined, done: true };
            }
            await new Promise<void>((r) => (wake = r));
          }
        },
        return: (): Promise<IteratorResult<Uint8Array>> => {
          // Stopped before the end (even after the worker's last slice): never a verdict.
          if (!state.resolved && state.failure === null) {
            const err = new Error(
              `download of ${objectUrl(ref)} abandoned by its consumer at byte ${received}`,
            );
            err.name = 'AbortError';
            fail(err);
          }
          return Promise.resolve({ value: undefined, done: true });
        },
      };
    },
  };
  return { chunks, result };
}
