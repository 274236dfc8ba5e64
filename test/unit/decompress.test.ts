/**
 * decompress (layer/compression.ts) releases its source on every way out: a
 * corrupt stream rejects ARCHIVE_MALFORMED only after the source was returned,
 * and so does a consumer that stops early. A download behind the source (its
 * worker thread, its S3 stream) stops then, instead of waiting forever.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { setImmediate } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import { ImageError } from '../../host-agent/src/errors.js';
import { decompress } from '../../host-agent/src/layer/compression.js';

const KiB = 1024;

/** `data` in 64 KiB chunks, one per turn of the event loop; `returned` once return() was called. */
function source(data: Buffer): AsyncIterable<Uint8Array> & { returned: boolean } {
  const s = {
    returned: false,
    [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
      let at = 0;
      return {
        next: async (): Promise<IteratorResult<Uint8Array>> => {
          await setImmediate();
          if (at >= data.length) return { done: true, value: undefined };
          const chunk = data.subarray(at, at + 64 * KiB);
          at += chunk.length;
          return { done: false, value: chunk };
        },
        return: (): Promise<IteratorResult<Uint8Array>> => {
          s.returned = true;
          return Promise.resolve({ done: true, value: undefined });
        },
      };
    },
  };
  return s;
}

test('a gzip stream corrupt 256 KiB in rejects ARCHIVE_MALFORMED after returning its source', async () => {
  const gz = gzipSync(randomBytes(4 * 1024 * KiB));
  gz.fill(0xa5, 256 * KiB, 260 * KiB);
  const src = source(gz);
  await assert.rejects(
    async () => {
      for await (const chunk of decompress(src, 'gzip', 'the archive')) void chunk;
    },
    (e: unknown) => e instanceof ImageError && e.code === 'ARCHIVE_MALFORMED',
  );
  assert.equal(src.returned, true, 'the source was returned before the rejection');
});

test('a consumer that stops early: the source is returned before the stop completes', async () => {
  const src = source(gzipSync(randomBytes(4 * 1024 * KiB)));
  for await (const chunk of decompress(src, 'gzip', 'the archive')) {
    void chunk;
    break;
  }
  assert.equal(src.returned, true);
});
