/**
 * How the unpacker treats its source: it reads it to the end (so the
 * downloader can verify the whole object), reports progress in source bytes,
 * stops on abort or on the source's own error, and releases the source.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import { ImageError } from '../../host-agent/src/errors.js';
import { unpackArchive, type UnpackOptions } from '../../host-agent/src/layer/index.js';
import { chunked, gzip, rawMember, rawTar } from '../helpers/tar-fixtures.js';

const own = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const limits: UnpackOptions['limits'] = {
  maxUnpackedBytes: 1 << 30,
  maxEntries: 1000,
  maxPathLength: 4095,
  maxPathDepth: 256,
};

function tmpRoot(t: TestContext): string {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'thinrelay-stream-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return base;
}

/** A source that records how far it was read and whether it was released early. */
function trackedSource(data: Buffer, chunkSize: number) {
  const state = { yielded: 0, finished: false, released: false };
  async function* counting(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of chunked(data, chunkSize)) {
        state.yielded += chunk.length;
        yield chunk;
      }
      state.finished = true;
    } finally {
      state.released = true;
    }
  }
  return { state, source: counting() };
}

const archive = rawTar(
  rawMember({ name: 'dir/', type: '5', mode: 0o755, ...own }),
  rawMember({ name: 'dir/file', mode: 0o644, ...own }, 'x'.repeat(100_000)),
);

describe('source handling', () => {
  it('reads the whole source, trailing padding and junk after the end marker included', async (t) => {
    const root = tmpRoot(t);
    const withJunk = Buffer.concat([
      archive,
      Buffer.alloc(9000),
      Buffer.from('junk after the archive'),
    ]);
    const { state, source } = trackedSource(withJunk, 4096);
    const progress: number[] = [];
    const stats = await unpackArchive(source, {
      root,
      limits,
      onProgress: (n) => progress.push(n),
    });
    assert.equal(stats.files, 1);
    assert.equal(stats.directories, 1);
    assert.equal(stats.contentBytes, 100_000);
    assert.equal(state.yielded, withJunk.length);
    assert.equal(state.finished, true);
    assert.equal(progress.at(-1), withJunk.length, 'the last progress report is the whole source');
    assert.ok(progress.length < 10, 'progress is reported now and then, not per chunk');
  });

  it('drains a gzip source without inflating what follows the end marker', async (t) => {
    const root = tmpRoot(t);
    // A second gzip member holding a bomb's worth of zeros: never inflated, only read.
    const compressed = Buffer.concat([gzip(archive), gzip(Buffer.alloc(32 * 1024 * 1024))]);
    const { state, source } = trackedSource(compressed, 65536);
    const progress: number[] = [];
    const stats = await unpackArchive(source, {
      root,
      limits,
      onProgress: (n) => progress.push(n),
    });
    assert.equal(stats.compression, 'gzip');
    assert.equal(state.yielded, compressed.length);
    assert.equal(progress.at(-1), compressed.length, 'progress counts compressed bytes');
  });

  it('accepts a Node readable stream', async (t) => {
    const root = tmpRoot(t);
    const stats = await unpackArchive(
      Readable.from([archive.subarray(0, 700), archive.subarray(700)]),
      {
        root,
        limits,
      },
    );
    assert.equal(fs.readFileSync(path.join(root, 'dir/file'), 'utf8').length, 100_000);
    assert.equal(stats.entries, 2);
  });

  it('passes the source error through and stops', async (t) => {
    const root = tmpRoot(t);
    const boom = new Error('network went away');
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield archive.subarray(0, 2048);
      await Promise.resolve();
      throw boom;
    }
    await assert.rejects(unpackArchive(failing(), { root, limits }), (err) => err === boom);
    await assert.rejects(
      unpackArchive(gzipFailing(), { root: tmpRoot(t), limits }),
      (err) => err === boom,
    );
    async function* gzipFailing(): AsyncGenerator<Uint8Array> {
      yield gzip(archive).subarray(0, 200);
      await Promise.resolve();
      throw boom;
    }
  });

  it('releases the source when the archive is refused', async (t) => {
    const root = tmpRoot(t);
    const bad = Buffer.concat([
      rawMember({ name: '../escape', ...own }, 'x'),
      // Longer than one read batch (1 MiB), so stopping early is observable.
      Buffer.alloc(4 * 1024 * 1024),
    ]);
    const { state, source } = trackedSource(bad, 64 * 1024);
    await assert.rejects(
      unpackArchive(source, { root, limits }),
      (err) => err instanceof ImageError,
    );
    assert.equal(state.released, true);
    assert.equal(state.finished, false);
  });

  it('destroys a Node stream source when the archive is refused', async (t) => {
    const root = tmpRoot(t);
    const bad = Buffer.concat([
      rawMember({ name: '/etc/escape', ...own }, 'x'),
      Buffer.alloc(100_000),
    ]);
    const stream = Readable.from(
      (function* () {
        for (let i = 0; i < bad.length; i += 1024) yield bad.subarray(i, i + 1024);
      })(),
    );
    await assert.rejects(
      unpackArchive(stream, { root, limits }),
      (err) => err instanceof ImageError,
    );
    assert.equal(stream.destroyed, true);
  });

  it('stops on abort with the signal reason', async (t) => {
    const root = tmpRoot(t);
    const controller = new AbortController();
    const reason = new Error('job cancelled');
    let sent = 0;
    async function* slow(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < archive.length; i += 1024) {
        if (++sent === 3) controller.abort(reason);
        await Promise.resolve();
        yield archive.subarray(i, i + 1024);
      }
    }
    await assert.rejects(
      unpackArchive(slow(), { root, limits, signal: controller.signal }),
      (err) => err === reason,
    );
  });

  it('refuses a root that is not empty', async (t) => {
    const root = tmpRoot(t);
    fs.writeFileSync(path.join(root, 'stray'), '');
    await assert.rejects(unpackArchive(chunked(archive), { root, limits }), /must be empty/);
  });
});
