import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SourceReader } from '../../host-agent/src/layer/compression.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function* chunksOf(sizes: number[]): AsyncGenerator<Buffer> {
  for (const [i, n] of sizes.entries()) {
    await Promise.resolve();
    yield Buffer.alloc(n, i);
  }
}

async function batches(sizes: number[]): Promise<Buffer[]> {
  const reader = new SourceReader(chunksOf(sizes), {});
  const out: Buffer[] = [];
  for (let b = await reader.next(); b !== null; b = await reader.next()) out.push(b);
  return out;
}

describe('SourceReader batches (what the unpacker writes at once)', () => {
  it('gathers small network chunks into batches of about 1 MiB', async () => {
    const out = await batches(Array<number>(40).fill(64 * KiB));
    assert.deepEqual(
      out.map((b) => b.length),
      [16, 16, 8].map((n) => n * 64 * KiB),
    );
  });

  it('hands a download slice a little short of 1 MiB on as it is: no 2 MiB copy with the next', async () => {
    // The download worker's slices: ~1 MiB each, the tail of each 8 MiB part a little less.
    const sizes = [1088 * KiB, 960 * KiB, 1056 * KiB, 600 * KiB, 64 * KiB, 64 * KiB];
    const out = await batches(sizes);
    assert.deepEqual(
      out.map((b) => b.length),
      [1088 * KiB, 960 * KiB, 1056 * KiB, 600 * KiB, 128 * KiB],
    );
    // The bytes still arrive in order and whole.
    assert.equal(
      Buffer.concat(out).length,
      sizes.reduce((a, b) => a + b, 0),
    );
    assert.equal(out[1]![0], 1);
    assert.equal(out[4]![64 * KiB], 5);
  });

  it('still gathers a first chunk under half a batch with what follows', async () => {
    const out = await batches([200 * KiB, MiB]);
    assert.deepEqual(
      out.map((b) => b.length),
      [200 * KiB + MiB],
    );
  });
});
