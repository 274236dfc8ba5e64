/**
 * The download worker thread's entry: runs downloadObject (HTTP, range
 * assembly, pins, retries, the in-order sha256) on its own core and hands
 * the bytes to the main thread in order, in slices it owns and transfers
 * (no copy across the boundary; a part's slice is transferred as gathered,
 * small network chunks are copied into slices of about 1 MiB first). Back-pressure: it stops pulling from the
 * download, which then stops requesting parts, while more than `readAhead`
 * bytes are handed over and not yet taken. Ends by itself after `done` or
 * `error`; the main thread terminates it when the consumer stops early.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { threadFailpoint } from '../failpoints.js';
import type { LogFields, LogLevel, Logger } from '../log.js';
import { downloadObject } from './download.js';
import { ownedSlices } from './parallel-download.js';
import {
  serializeError,
  type AckMessage,
  type WorkerInput,
  type WorkerMessage,
} from './download-protocol.js';
import { createS3Client } from './s3-client.js';

/** Bytes per message: network chunks are gathered into slices of about this much. */
const SLICE_BYTES = 1024 * 1024;

/**
 * Collect the worker's garbage every this many bytes: V8 frees a dead network
 * buffer only when a GC runs, and waits for tens of MiB of them (its external
 * memory limit) before one does, on each thread: bounded here instead.
 */
const COLLECT_EVERY_BYTES = 16 * 1024 * 1024;
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as (options?: { type?: 'minor' | 'major' }) => void;

const port = parentPort!;
const input = workerData as WorkerInput;
const post = (m: WorkerMessage, transfer: ArrayBuffer[] = []): void =>
  port.postMessage(m, transfer);

function portLogger(base: LogFields): Logger {
  const at =
    (level: LogLevel) =>
    (msg: string, fields?: LogFields): void =>
      post({ type: 'log', level, msg, fields: { ...base, ...fields } });
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (fields) => portLogger({ ...base, ...fields }),
  };
}

let taken = 0;
let wake: (() => void) | null = null;
port.on('message', (m: AckMessage) => {
  taken = m.bytes;
  const w = wake;
  wake = null;
  w?.();
});

async function main(): Promise<void> {
  const client = createS3Client(input.recipe);
  let sent = 0;
  // Slices are fresh buffers of our own: a network buffer may be shared, never transferred.
  let slice: Uint8Array | null = null;
  let filled = 0;
  const flush = async (): Promise<void> => {
    if (slice === null || filled === 0) return;
    const data = filled === slice.byteLength ? slice : slice.slice(0, filled);
    slice = null;
    const before = sent;
    sent += filled;
    filled = 0;
    post({ type: 'chunk', data: data.buffer as ArrayBuffer }, [data.buffer as ArrayBuffer]);
    threadFailpoint('download:worker');
    if (Math.floor(sent / COLLECT_EVERY_BYTES) !== Math.floor(before / COLLECT_EVERY_BYTES)) {
      collect({ type: 'major' });
    }
    while (sent - taken > input.readAhead) await new Promise<void>((r) => (wake = r));
  };
  try {
    const download = downloadObject(client, input.ref, {
      ...input.opts,
      logger: portLogger({}),
    });
    for await (const chunk of download.chunks) {
      if (filled === 0 && ownedSlices.has(chunk)) {
        // A part's slice, already in a buffer of its own: transferred as it is.
        slice = chunk;
        filled = chunk.byteLength;
        await flush();
        continue;
      }
      let at = 0;
      while (at < chunk.byteLength) {
        slice ??= new Uint8Array(Math.max(SLICE_BYTES, chunk.byteLength - at));
        const n = Math.min(slice.byteLength - filled, chunk.byteLength - at);
        slice.set(chunk.subarray(at, at + n), filled);
        filled += n;
        at += n;
        if (filled === slice.byteLength) await flush();
      }
      // A part's slice (about 1 MiB) goes at once; small network chunks are gathered.
      if (filled >= SLICE_BYTES / 2) await flush();
    }
    await flush();
    post({ type: 'done', result: await download.result });
  } catch (err) {
    post({ type: 'error', error: serializeError(err) });
  } finally {
    client.destroy();
    port.close();
  }
}

void main();
