/**
 * The parallel ranged download through a realistic link (bandwidth capped
 * per connection, latency both ways) in front of the S3 emulator, and
 * against a stub for what s3rver can't show (versions, a store that ignores
 * Range). Objects and parts are small so the suite stays quick.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { S3Client } from '@aws-sdk/client-s3';
import { ImageError, TransientError } from '../../host-agent/src/errors.js';
import { downloadObject, type DownloadOptions } from '../../host-agent/src/source/download.js';
import { headObject } from '../../host-agent/src/source/head.js';
import type { ObjectRef } from '../../host-agent/src/source/object-ref.js';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';
import { startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { startLinkProxy, type LinkProxy, type LinkProxyOptions } from '../helpers/link-proxy.js';

const BUCKET = 'thinrelay-parallel';
const KiB = 1024;
const PART = 256 * KiB;
const LIMIT = 64 * 1024 * KiB;

const unhandled: unknown[] = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));

const sha256hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function drain(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions,
): Promise<{ data: Buffer; result: Awaited<ReturnType<typeof downloadObject>['result']> }> {
  const dl = downloadObject(client, ref, opts);
  const parts: Buffer[] = [];
  for await (const chunk of dl.chunks) parts.push(Buffer.from(chunk));
  return { data: Buffer.concat(parts), result: await dl.result };
}

/** `bytes=a-b` / `bytes=a-` → [a, b] (b = size - 1 when open). */
function rangeOf(header: string | undefined, size: number): [number, number] {
  if (header === undefined) return [0, size - 1];
  const m = /^bytes=(\d+)-(\d*)$/.exec(header);
  assert.ok(m, `unexpected Range ${header}`);
  return [Number(m[1]), m[2] === '' ? size - 1 : Number(m[2])];
}

/** The ranges the GETs through `proxy` asked for, sorted; checks that every GET was pinned. */
function pinnedRanges(proxy: LinkProxy, ref: ObjectRef): [number, number][] {
  const gets = proxy.requests.filter((r) => r.method === 'GET');
  for (const g of gets) assert.equal(g.headers['if-match'], ref.eTag, 'every GET is pinned');
  return gets.map((g) => rangeOf(g.headers.range, ref.size)).sort((a, b) => a[0] - b[0]);
}

/** Sorted ranges tile exactly bytes `from`..`to`: contiguous, no overlap, none over `maxPart`. */
function assertTiling(ranges: [number, number][], from: number, to: number, maxPart: number): void {
  let next = from;
  for (const [a, b] of ranges) {
    assert.equal(a, next, 'ranges are contiguous, no overlap');
    assert.ok(b - a + 1 <= maxPart);
    next = b + 1;
  }
  assert.equal(next, to + 1, 'ranges cover exactly the bytes asked for');
}

describe('parallel ranged download through a capped link (s3rver)', () => {
  let emu: S3Emulator;
  let data: Buffer;
  const cleanups: (() => Promise<void>)[] = [];

  before(async () => {
    emu = await startS3Emulator();
    await emu.createBucket(BUCKET);
    data = randomBytes(16 * PART + 12345); // 17 parts, the last one short
    await emu.putObject(BUCKET, 'images/rootfs.tar', data);
  });
  after(async () => {
    await emu?.stop();
    assert.deepEqual(unhandled, [], 'no unhandled rejections');
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function link(
    opts: Omit<LinkProxyOptions, 'targetPort'> = {},
  ): Promise<{ proxy: LinkProxy; client: S3Client }> {
    const proxy = await startLinkProxy({
      targetPort: emu.port,
      bytesPerSecond: 20 * 1024 * KiB,
      latencyMs: 2,
      ...opts,
    });
    const client = emu.makeClient({ endpoint: proxy.endpoint, maxAttempts: 1 });
    cleanups.push(async () => {
      client.destroy();
      await proxy.close();
    });
    return { proxy, client };
  }

  /** A link that cuts the first response to `range` after `bytes` bytes of its body. */
  function cutOnce(
    range: string,
    bytes: number,
    opts: Omit<LinkProxyOptions, 'targetPort' | 'cutResponse'> = {},
  ): ReturnType<typeof link> {
    let cut = false;
    return link({
      ...opts,
      cutResponse: (req) => {
        if (cut || req.headers.range !== range) return undefined;
        cut = true;
        return bytes;
      },
    });
  }

  const head = (key = 'images/rootfs.tar'): Promise<ObjectRef> =>
    headObject(emu.client, BUCKET, key, { maxBlobBytes: LIMIT });

  for (const concurrency of [1, 4, 16]) {
    it(`${concurrency} range(s) at a time: identical bytes and sha256, every GET pinned, ranges tile the object`, async () => {
      const ref = await head();
      const { proxy, client } = await link();
      let last = 0;
      const { data: got, result } = await drain(client, ref, {
        partSize: PART,
        concurrency,
        onBytes: (n) => (last = n),
      });
      assert.ok(got.equals(data), 'bytes identical');
      assert.deepEqual(result, { sha256: sha256hex(data), size: data.length, resumes: 0 });
      assert.equal(last, data.length);

      const ranges = pinnedRanges(proxy, ref);
      if (concurrency === 1) {
        assert.equal(ranges.length, 1, 'one streamed GET');
        assert.equal(proxy.requests.find((r) => r.method === 'GET')?.headers.range, undefined);
        return;
      }
      assert.equal(ranges.length, 17, 'one GET per part');
      assertTiling(ranges, 0, data.length - 1, PART);
      assert.ok(proxy.peakConnections > 1, 'ranges were fetched in parallel');
      assert.ok(proxy.peakConnections <= concurrency, `at most ${concurrency} connections`);
    });
  }

  // Windows not aligned to parts: inside, to the end, within one part.
  const windows: { name: string; start: number; end: number; concurrency: number }[] = [
    { name: 'across parts, 4 at a time', start: PART + 1000, end: 9 * PART + 17, concurrency: 4 },
    {
      name: 'to the end, 16 at a time',
      start: 5 * PART - 3,
      end: 16 * PART + 12344,
      concurrency: 16,
    },
    { name: 'across parts, one stream', start: 3 * PART + 5, end: 7 * PART, concurrency: 1 },
    { name: 'within one part', start: 2 * PART + 7, end: 2 * PART + 9000, concurrency: 8 },
  ];
  for (const w of windows) {
    it(`a byte window ${w.name}: exactly its bytes and sha256, pinned GETs tiling only the window`, async () => {
      const ref = await head();
      const { proxy, client } = await link();
      const want = data.subarray(w.start, w.end + 1);
      let last = 0;
      const { data: got, result } = await drain(client, ref, {
        partSize: PART,
        concurrency: w.concurrency,
        window: { start: w.start, end: w.end },
        onBytes: (n) => (last = n),
      });
      assert.ok(got.equals(want), 'bytes identical to the window');
      assert.deepEqual(result, { sha256: sha256hex(want), size: want.length, resumes: 0 });
      assert.equal(last, want.length);
      const ranges = pinnedRanges(proxy, ref);
      const single = w.concurrency === 1 || want.length <= PART;
      assert.equal(ranges.length, single ? 1 : Math.ceil(want.length / PART));
      assertTiling(ranges, w.start, w.end, single ? want.length : PART);
      if (!single) assert.ok(proxy.peakConnections > 1, 'ranges were fetched in parallel');
    });
  }

  it('a byte window out of the object, or empty, is refused before any request', async () => {
    const ref = await head();
    const { proxy, client } = await link();
    for (const window of [
      { start: -1, end: 10 },
      { start: 10, end: 9 },
      { start: 0, end: data.length },
      { start: 0.5, end: 10 },
    ]) {
      assert.throws(() => downloadObject(client, ref, { window }), RangeError);
    }
    assert.equal(proxy.requests.length, 0);
  });

  it('a range of a byte window that breaks mid-way is resumed alone, inside the window', async () => {
    const ref = await head();
    const window = { start: 2 * PART + 100, end: 8 * PART - 100 };
    const broken = `bytes=${3 * PART + 100}-${4 * PART + 99}`;
    const { proxy, client } = await cutOnce(broken, 100 * KiB);
    const want = data.subarray(window.start, window.end + 1);
    const { data: got, result } = await drain(client, ref, {
      partSize: PART,
      concurrency: 4,
      backoffMs: 1,
      window,
    });
    assert.ok(got.equals(want), 'bytes identical to the window');
    assert.equal(result.sha256, sha256hex(want));
    assert.equal(result.resumes, 1);
    assert.equal(proxy.cuts.length, 1);
    const gets = proxy.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 7, '6 parts + one resume');
    const resumed = gets.filter((g) => rangeOf(g.headers.range, data.length)[1] === 4 * PART + 99);
    assert.equal(resumed.length, 2, 'only the broken part was asked again');
    const [from] = rangeOf(resumed[1]?.headers.range, data.length);
    assert.ok(from > 3 * PART + 100 && from < 4 * PART + 99, `resumed inside the part, at ${from}`);
  });

  it('an overwrite during a byte-window download fails with OBJECT_CHANGED; only pinned bytes were handed over', async () => {
    const key = 'images/window-overwritten.tar';
    const original = randomBytes(16 * PART);
    await emu.putObject(BUCKET, key, original);
    const ref = await head(key);
    const window = { start: PART / 2, end: 12 * PART };
    const { client } = await cutOnce(
      `bytes=${PART / 2 + 2 * PART}-${PART / 2 + 3 * PART - 1}`,
      64 * KiB,
      {
        bytesPerSecond: 4 * 1024 * KiB,
        onCut: async () => void (await emu.putObject(BUCKET, key, randomBytes(original.length))),
      },
    );
    const dl = downloadObject(client, ref, {
      partSize: PART,
      concurrency: 4,
      backoffMs: 1,
      window,
    });
    const seen: Buffer[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) seen.push(Buffer.from(chunk));
      })(),
      (e: unknown) => e instanceof ImageError && e.code === 'OBJECT_CHANGED',
    );
    await assert.rejects(dl.result, { code: 'OBJECT_CHANGED' });
    const handed = Buffer.concat(seen);
    assert.ok(handed.length < window.end - window.start + 1, 'stopped before the end');
    assert.ok(handed.equals(original.subarray(window.start, window.start + handed.length)));
  });

  it('an object of one part or less is one GET', async () => {
    const small = randomBytes(PART);
    await emu.putObject(BUCKET, 'images/small.tar', small);
    const ref = await head('images/small.tar');
    const { proxy, client } = await link();
    const { data: got } = await drain(client, ref, { partSize: PART, concurrency: 16 });
    assert.ok(got.equals(small));
    const gets = proxy.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 1);
    assert.equal(gets[0]?.headers.range, undefined);
  });

  it('a range that breaks mid-way is resumed alone, from where it broke', async () => {
    const ref = await head();
    const broken = `bytes=${3 * PART}-${4 * PART - 1}`;
    const { proxy, client } = await cutOnce(broken, 100 * KiB);
    const { data: got, result } = await drain(client, ref, {
      partSize: PART,
      concurrency: 4,
      backoffMs: 1,
    });
    assert.ok(got.equals(data), 'bytes identical');
    assert.equal(result.sha256, sha256hex(data));
    assert.equal(result.resumes, 1);
    assert.equal(proxy.cuts.length, 1);

    const gets = proxy.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 18, '17 parts + one resume');
    const ofPart3 = gets.filter((g) => rangeOf(g.headers.range, data.length)[1] === 4 * PART - 1);
    assert.equal(ofPart3.length, 2, 'only the broken part was asked again');
    const [from, to] = rangeOf(ofPart3[1]?.headers.range, data.length);
    assert.ok(from > 3 * PART && from < 4 * PART - 1, `resumed inside the part, at ${from}`);
    assert.equal(to, 4 * PART - 1);
    for (const g of gets) assert.equal(g.headers['if-match'], ref.eTag);
  });

  it('an overwrite during a parallel download fails with OBJECT_CHANGED; only pinned bytes were handed over', async () => {
    const key = 'images/overwritten.tar';
    const original = randomBytes(16 * PART);
    await emu.putObject(BUCKET, key, original);
    const ref = await head(key);
    const { proxy, client } = await cutOnce(`bytes=${2 * PART}-${3 * PART - 1}`, 64 * KiB, {
      bytesPerSecond: 4 * 1024 * KiB,
      // Same size, new bytes: only the ETag tells.
      onCut: async () => void (await emu.putObject(BUCKET, key, randomBytes(original.length))),
    });
    const dl = downloadObject(client, ref, { partSize: PART, concurrency: 4, backoffMs: 1 });
    const seen: Buffer[] = [];
    let err: unknown = null;
    try {
      for await (const chunk of dl.chunks) seen.push(Buffer.from(chunk));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, 'OBJECT_CHANGED');
    // The new ETag, or (s3rver writes in place) the size of a version half written.
    assert.match(err.message, /ETag|bytes, pinned/);
    await assert.rejects(dl.result, (e: unknown) => e === err);
    const handed = Buffer.concat(seen);
    assert.ok(handed.length < original.length, 'stopped before the end');
    assert.ok(
      handed.equals(original.subarray(0, handed.length)),
      `the ${handed.length} bytes handed over are the pinned version's, nothing mixed`,
    );
    assert.equal(proxy.cuts.length, 1);
  });

  it('memory stays bounded: parts are requested at most `concurrency` ahead of a slow consumer', async () => {
    const ref = await head();
    const concurrency = 3;
    const { proxy, client } = await link({ bytesPerSecond: Infinity, latencyMs: 0 });
    const dl = downloadObject(client, ref, { partSize: PART, concurrency });
    let consumed = 0;
    let checks = 0;
    for await (const chunk of dl.chunks) {
      // Parts requested so far must all lie within `concurrency` parts of the one handed over.
      const current = Math.floor(consumed / PART);
      for (const g of proxy.requests.filter((r) => r.method === 'GET')) {
        const part = Math.floor(rangeOf(g.headers.range, data.length)[0] / PART);
        assert.ok(
          part < current + concurrency,
          `part ${part} requested while part ${current} is handed over`,
        );
        checks += 1;
      }
      consumed += chunk.byteLength;
      await new Promise((r) => setTimeout(r, 2)); // a slow unpacker
    }
    assert.equal((await dl.result).sha256, sha256hex(data));
    assert.ok(checks > 17);
  });

  it('starts with two ranges and opens more only while the consumer waits for bytes', async () => {
    const ref = await head();
    // A slow link and an instant consumer: the consumer starves, the download widens.
    const slow = await link({ bytesPerSecond: 4 * 1024 * KiB });
    const { data: got } = await drain(slow.client, ref, { partSize: PART, concurrency: 8 });
    assert.ok(got.equals(data));
    assert.ok(slow.proxy.peakConnections > 2, `widened (peak ${slow.proxy.peakConnections})`);
    assert.ok(slow.proxy.peakConnections <= 8);
    // A fast link and a slow consumer: bytes are always waiting, two ranges suffice.
    // Widening on a real stall is right (the consumer did wait): a disk flush left by
    // an earlier test can stall the emulator. So up to three downloads, and one of
    // them must never widen; a download that widens on a fast link fails all three.
    const peaks: number[] = [];
    for (let attempt = 0; attempt < 3 && !peaks.includes(2); attempt++) {
      const fast = await link({ bytesPerSecond: Infinity, latencyMs: 0 });
      const dl = downloadObject(fast.client, ref, { partSize: PART, concurrency: 8 });
      const seen: Buffer[] = [];
      for await (const chunk of dl.chunks) {
        seen.push(Buffer.from(chunk));
        await new Promise((r) => setTimeout(r, 20)); // a slow unpacker
      }
      assert.ok(Buffer.concat(seen).equals(data));
      assert.equal((await dl.result).sha256, sha256hex(data));
      peaks.push(fast.proxy.peakConnections);
    }
    assert.ok(
      peaks.includes(2),
      `never widened (peak connections per download: ${peaks.join(', ')})`,
    );
  });

  it('a consumer that stops early stops every range: no further requests, result rejects quietly', async () => {
    const ref = await head();
    const { proxy, client } = await link({ bytesPerSecond: 2 * 1024 * KiB });
    const dl = downloadObject(client, ref, { partSize: PART, concurrency: 4 });
    for await (const chunk of dl.chunks) {
      assert.ok(chunk.byteLength > 0);
      break;
    }
    await assert.rejects(dl.result, { name: 'AbortError' });
    const asked = proxy.requests.length;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(proxy.requests.length, asked, 'nothing requested after the consumer left');
    assert.ok(asked <= 4);
  });

  it('gives up with DOWNLOAD_FAILED when one range keeps failing, and stops the others', async () => {
    const ref = await head();
    const { proxy, client } = await link({
      cutResponse: (req) =>
        req.headers.range?.startsWith(`bytes=${5 * PART}`) === true ? 0 : undefined,
    });
    const dl = downloadObject(client, ref, {
      partSize: PART,
      concurrency: 4,
      backoffMs: 1,
      maxRetries: 2,
    });
    let bytes = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) bytes += chunk.byteLength;
      })(),
      (e: unknown) => e instanceof TransientError && e.code === 'DOWNLOAD_FAILED',
    );
    assert.ok(bytes <= 5 * PART, 'nothing past the failed part handed over');
    assert.equal(proxy.cuts.length, 3, 'one try plus two retries of that part');
  });
});

describe('parallel ranged download against a stub (versions, stores that ignore Range)', () => {
  let server: Server;
  let client: S3Client;
  const body = randomBytes(5 * 64 * KiB + 7);
  const seen: { url: string; range: string | undefined; ifMatch: string | undefined }[] = [];

  before(async () => {
    server = createServer((req, res) => {
      req.resume();
      const key = (req.url ?? '').split('?')[0]?.split('/').slice(2).join('/') ?? '';
      const headers = { ETag: '"v1etag"', 'x-amz-version-id': 'v1' };
      if (req.method === 'HEAD') {
        res.writeHead(200, { ...headers, 'Content-Length': String(body.length) });
        res.end();
        return;
      }
      seen.push({ url: req.url ?? '', range: req.headers.range, ifMatch: req.headers['if-match'] });
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (key === 'ignores-range.tar' || m === null) {
        res.writeHead(200, { ...headers, 'Content-Length': String(body.length) });
        res.end(body);
        return;
      }
      const from = Number(m[1]);
      const to = m[2] === '' ? body.length - 1 : Math.min(Number(m[2]), body.length - 1);
      res.writeHead(206, {
        ...headers,
        'Content-Length': String(to - from + 1),
        'Content-Range': `bytes ${from}-${to}/${body.length}`,
      });
      res.end(body.subarray(from, to + 1));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    client = createS3Client({
      endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      region: 'us-east-1',
      credentials: { accessKeyId: 'x', secretAccessKey: 'y' },
      maxAttempts: 1,
    });
  });
  after(async () => {
    client?.destroy();
    server?.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('every ranged GET carries VersionId and If-Match', async () => {
    seen.length = 0;
    const ref = await headObject(client, 'stub-bucket', 'versioned.tar', { maxBlobBytes: LIMIT });
    assert.equal(ref.versionId, 'v1');
    const { data: got } = await drain(client, ref, { partSize: 64 * KiB, concurrency: 4 });
    assert.ok(got.equals(body));
    assert.equal(seen.length, 6);
    for (const s of seen) {
      assert.match(s.url, /[?&]versionId=v1(&|$)/);
      assert.equal(s.ifMatch, '"v1etag"');
      assert.ok(s.range !== undefined);
    }
  });

  it('a store that answers every range with the whole object still yields the exact bytes', async () => {
    const ref = await headObject(client, 'stub-bucket', 'ignores-range.tar', {
      maxBlobBytes: LIMIT,
    });
    const { data: got, result } = await drain(client, ref, { partSize: 64 * KiB, concurrency: 4 });
    assert.ok(got.equals(body));
    assert.equal(result.sha256, sha256hex(body));
  });

  for (const concurrency of [1, 4]) {
    it(`a byte window from a store that ignores Range (${concurrency} at a time): exactly the window`, async () => {
      const ref = await headObject(client, 'stub-bucket', 'ignores-range.tar', {
        maxBlobBytes: LIMIT,
      });
      const window = { start: 64 * KiB + 3, end: 4 * 64 * KiB + 1 };
      const want = body.subarray(window.start, window.end + 1);
      const { data: got, result } = await drain(client, ref, {
        partSize: 64 * KiB,
        concurrency,
        window,
      });
      assert.ok(got.equals(want));
      assert.deepEqual(result, { sha256: sha256hex(want), size: want.length, resumes: 0 });
    });
  }

  it('a version other than the pinned one fails every part with OBJECT_CHANGED', async () => {
    const ref = {
      ...(await headObject(client, 'stub-bucket', 'versioned.tar', { maxBlobBytes: LIMIT })),
      versionId: 'v0',
    };
    const dl = downloadObject(client, ref, { partSize: 64 * KiB, concurrency: 4 });
    let bytes = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) bytes += chunk.byteLength;
      })(),
      (e: unknown) => e instanceof ImageError && e.code === 'OBJECT_CHANGED',
    );
    assert.equal(bytes, 0);
  });
});
