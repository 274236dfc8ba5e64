/**
 * The S3 side of the host agent against a real S3 emulator (s3rver) and, for
 * what s3rver can't do (412 on If-Match, additional checksums), a tiny stub
 * that answers the way S3 does.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  ImageError,
  InternalError,
  TransientError,
  UsageError,
} from '../../host-agent/src/errors.js';
import { createLogger, jsonLineSink } from '../../host-agent/src/log.js';
import { downloadObject, type DownloadOptions } from '../../host-agent/src/source/download.js';
import { headObject } from '../../host-agent/src/source/head.js';
import type { ObjectRef } from '../../host-agent/src/source/object-ref.js';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { startTcpCutter, type TcpCutter, type TcpCutterOptions } from '../helpers/tcp-cutter.js';

const BUCKET = 'thinrelay-images';
const MiB = 1024 * 1024;
const LIMIT = 64 * MiB;

const unhandled: unknown[] = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));

function sha256hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function drain(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions = {},
): Promise<{
  data: Buffer;
  chunks: number;
  result: Awaited<ReturnType<typeof downloadObject>['result']>;
}> {
  const dl = downloadObject(client, ref, opts);
  const parts: Buffer[] = [];
  for await (const chunk of dl.chunks) parts.push(Buffer.from(chunk));
  const result = await dl.result;
  return { data: Buffer.concat(parts), chunks: parts.length, result };
}

/** Iterate to the end, expecting a failure; returns the error and the bytes seen before it. */
async function drainExpectingError(
  client: S3Client,
  ref: ObjectRef,
  opts: DownloadOptions = {},
): Promise<{ err: unknown; resultErr: unknown; bytes: number }> {
  const dl = downloadObject(client, ref, opts);
  let bytes = 0;
  let err: unknown = null;
  try {
    for await (const chunk of dl.chunks) bytes += chunk.byteLength;
  } catch (e) {
    err = e;
  }
  assert.notEqual(err, null, 'the iteration should have failed');
  const resultErr = await dl.result.then(
    () => assert.fail('result should reject'),
    (e: unknown) => e,
  );
  return { err, resultErr, bytes };
}

function assertImageError(err: unknown, code: string, cls: typeof ImageError = ImageError): void {
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
}

describe('S3 source against s3rver', () => {
  let emu: S3Emulator;
  let data: Buffer;
  let eTag: string;
  const cleanups: (() => Promise<void>)[] = [];

  before(async () => {
    emu = await startS3Emulator();
    await emu.createBucket(BUCKET);
    data = randomBytes(6 * MiB + 12345);
    ({ eTag } = await emu.putObject(BUCKET, 'images/big.tar', data));
  });
  after(async () => {
    await emu?.stop();
    assert.deepEqual(unhandled, [], 'no unhandled rejections');
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function cutter(
    opts: Omit<TcpCutterOptions, 'targetPort'>,
  ): Promise<{ cutter: TcpCutter; client: S3Client }> {
    const c = await startTcpCutter({ targetPort: emu.port, ...opts });
    cleanups.push(() => c.close());
    const client = emu.makeClient({ endpoint: c.endpoint, maxAttempts: 1 });
    return { cutter: c, client };
  }

  async function head(key = 'images/big.tar'): Promise<ObjectRef> {
    return headObject(emu.client, BUCKET, key, { maxBlobBytes: LIMIT });
  }

  it('heads an object: size, ETag, no version, no checksum (s3rver has none)', async () => {
    const ref = await head();
    assert.equal(ref.bucket, BUCKET);
    assert.equal(ref.key, 'images/big.tar');
    assert.equal(ref.size, data.length);
    assert.equal(ref.eTag, eTag);
    assert.equal(ref.versionId, null);
    assert.equal(ref.checksumSha256, null);
    assert.ok(ref.lastModified !== null && !Number.isNaN(Date.parse(ref.lastModified)));
  });

  it('downloads a multi-MB object: exact bytes, sha256 and size', async () => {
    const ref = await head();
    let lastTotal = 0;
    const {
      data: got,
      chunks,
      result,
    } = await drain(emu.client, ref, {
      onBytes: (t) => (lastTotal = t),
    });
    assert.ok(chunks > 1, 'streamed in several chunks');
    assert.equal(got.length, data.length);
    assert.ok(got.equals(data), 'bytes identical');
    assert.deepEqual(result, { sha256: sha256hex(data), size: data.length, resumes: 0 });
    assert.equal(lastTotal, data.length);
  });

  it('downloads an empty object', async () => {
    await emu.putObject(BUCKET, 'images/empty.tar', Buffer.alloc(0));
    const ref = await head('images/empty.tar');
    const { data: got, result } = await drain(emu.client, ref);
    assert.equal(got.length, 0);
    assert.deepEqual(result, { sha256: sha256hex(Buffer.alloc(0)), size: 0, resumes: 0 });
  });

  it('resumes with Range after two cuts mid-body (FIN), same pins, identical bytes', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({ cutAfterBytes: 1 * MiB, cutConnections: 2 });
    const lines: string[] = [];
    const logger = createLogger(
      jsonLineSink((l) => lines.push(l)),
      'debug',
    );
    // One stream (the parallel download's ranges are tested in parallel-download.test.ts).
    const { data: got, result } = await drain(client, ref, {
      backoffMs: 1,
      logger,
      concurrency: 1,
    });

    assert.ok(got.equals(data), 'bytes identical');
    assert.equal(result.sha256, sha256hex(data));
    assert.equal(result.size, data.length);
    assert.equal(result.resumes, 2);

    assert.equal(c.cuts.length, 2);
    const gets = c.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 3);
    const [first, second, third] = gets;
    assert.equal(first?.headers.range, undefined, 'first GET is not ranged');
    const cut1 = c.cuts[0]?.forwardedBodyBytes ?? -1;
    const cut2 = c.cuts[1]?.forwardedBodyBytes ?? -1;
    assert.ok(cut1 > 0 && cut2 > 0);
    assert.equal(
      second?.headers.range,
      `bytes=${cut1}-`,
      'second GET resumes where the body broke',
    );
    assert.equal(third?.headers.range, `bytes=${cut1 + cut2}-`);
    for (const g of gets) assert.equal(g.headers['if-match'], ref.eTag, 'every GET is pinned');

    const resumes = lines
      .map((l) => JSON.parse(l) as { level: string; msg: string; received?: number })
      .filter((l) => l.msg === 's3 download interrupted, resuming');
    assert.equal(resumes.length, 2);
    assert.equal(resumes[0]?.level, 'warn');
    assert.equal(resumes[0]?.received, cut1);
  });

  it('resumes after a connection reset (RST)', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({
      cutAfterBytes: 2 * MiB,
      cutConnections: 1,
      mode: 'reset',
    });
    const { data: got, result } = await drain(client, ref, { backoffMs: 1 });
    assert.ok(got.equals(data), 'bytes identical');
    assert.equal(result.sha256, sha256hex(data));
    assert.equal(result.resumes, 1);
    assert.match(c.requests[1]?.headers.range ?? '', /^bytes=\d+-$/);
  });

  it('gives up with TransientError DOWNLOAD_FAILED when retries without progress are exhausted', async () => {
    const ref = await head();
    // Cut every connection before a single response byte.
    const { cutter: c, client } = await cutter({ cutAfterBytes: 0, cutConnections: Infinity });
    const { err, resultErr, bytes } = await drainExpectingError(client, ref, {
      maxRetries: 2,
      backoffMs: 1,
      concurrency: 1,
    });
    assertImageError(err, 'DOWNLOAD_FAILED', TransientError);
    assert.equal(resultErr, err, 'result rejects with the same error');
    assert.equal(bytes, 0);
    assert.equal(c.connections, 3, 'one try plus two retries');
  });

  it('gives up when the total resume budget is spent, even with progress', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({
      cutAfterBytes: 256 * 1024,
      cutConnections: Infinity,
    });
    const { err, bytes } = await drainExpectingError(client, ref, {
      maxRetries: 2,
      maxResumes: 3,
      backoffMs: 1,
      concurrency: 1,
    });
    assertImageError(err, 'DOWNLOAD_FAILED', TransientError);
    assert.ok(bytes > 0 && bytes < data.length);
    assert.equal(c.connections, 4);
  });

  it('head of a missing key → OBJECT_NOT_FOUND naming bucket and key', async () => {
    await assert.rejects(
      headObject(emu.client, BUCKET, 'images/missing.tar', { maxBlobBytes: LIMIT }),
      (err: unknown) => {
        assertImageError(err, 'OBJECT_NOT_FOUND');
        assert.match((err as Error).message, /thinrelay-images/);
        assert.match((err as Error).message, /images\/missing\.tar/);
        return true;
      },
    );
  });

  it('head of a missing bucket → UsageError CONFIG with a hint', async () => {
    await assert.rejects(
      headObject(emu.client, 'no-such-bucket', 'x.tar', { maxBlobBytes: LIMIT }),
      (err: unknown) => {
        assert.ok(err instanceof UsageError, String(err));
        assert.equal(err.code, 'CONFIG');
        assert.match(err.message, /no-such-bucket/);
        assert.ok(err.hint);
        return true;
      },
    );
  });

  it('head with bad credentials → UsageError CONFIG', async () => {
    const bad = createS3Client({
      endpoint: emu.endpoint,
      region: 'us-east-1',
      credentials: { accessKeyId: 'WRONG', secretAccessKey: 'WRONG' },
      maxAttempts: 1,
    });
    try {
      await assert.rejects(
        headObject(bad, BUCKET, 'images/big.tar', { maxBlobBytes: LIMIT }),
        (err: unknown) => {
          assert.ok(err instanceof UsageError, String(err));
          assert.equal(err.code, 'CONFIG');
          assert.match(err.message, /InvalidAccessKeyId/);
          return true;
        },
      );
    } finally {
      bad.destroy();
    }
  });

  it('head of an object over maxBlobBytes → LIMIT_BLOB_SIZE', async () => {
    await assert.rejects(
      headObject(emu.client, BUCKET, 'images/big.tar', { maxBlobBytes: data.length - 1 }),
      (err: unknown) => {
        assertImageError(err, 'LIMIT_BLOB_SIZE');
        return true;
      },
    );
    const ok = await headObject(emu.client, BUCKET, 'images/big.tar', {
      maxBlobBytes: data.length,
    });
    assert.equal(ok.size, data.length);
  });

  it('head on an unreachable endpoint → TransientError DOWNLOAD_FAILED', async () => {
    const dead = createS3Client({
      endpoint: 'http://127.0.0.1:9',
      region: 'us-east-1',
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      maxAttempts: 1,
    });
    try {
      await assert.rejects(
        headObject(dead, BUCKET, 'images/big.tar', { maxBlobBytes: LIMIT }),
        (err: unknown) => {
          assertImageError(err, 'DOWNLOAD_FAILED', TransientError);
          return true;
        },
      );
    } finally {
      dead.destroy();
    }
  });

  it('object overwritten between head and get → OBJECT_CHANGED, no byte yielded', async () => {
    const key = 'images/replaced-before.tar';
    await emu.putObject(BUCKET, key, randomBytes(2 * MiB));
    const ref = await head(key);
    await emu.putObject(BUCKET, key, randomBytes(2 * MiB));
    // Through a non-cutting proxy, to see what was asked.
    const { cutter: c, client } = await cutter({ cutAfterBytes: 0, cutConnections: 0 });
    const { err, resultErr, bytes } = await drainExpectingError(client, ref);
    assertImageError(err, 'OBJECT_CHANGED');
    assert.equal(resultErr, err);
    assert.equal(bytes, 0);
    // s3rver ignores If-Match (it answers 200 with the new object); the GET did
    // carry it, and the ETag check on the response caught the change.
    assert.equal(c.requests[0]?.headers['if-match'], ref.eTag);
  });

  it('object overwritten (same size) between two ranged parts → OBJECT_CHANGED', async () => {
    const key = 'images/replaced-during.tar';
    const original = randomBytes(4 * MiB);
    await emu.putObject(BUCKET, key, original);
    const ref = await head(key);
    const { cutter: c, client } = await cutter({
      cutAfterBytes: 1 * MiB,
      cutConnections: 1,
      onCut: async () => {
        await emu.putObject(BUCKET, key, randomBytes(original.length));
      },
    });
    const { err, bytes } = await drainExpectingError(client, ref, { backoffMs: 1 });
    assertImageError(err, 'OBJECT_CHANGED');
    assert.match((err as Error).message, /ETag/);
    assert.equal(bytes, c.cuts[0]?.forwardedBodyBytes, 'only bytes of the pinned version');
    const resumed = c.requests[1];
    assert.equal(resumed?.headers.range, `bytes=${bytes}-`);
    assert.equal(resumed?.headers['if-match'], ref.eTag);
  });

  it('size differing from the pin → OBJECT_CHANGED before any byte', async () => {
    const ref = { ...(await head()), size: data.length + 1 };
    const { err, bytes } = await drainExpectingError(emu.client, ref);
    assertImageError(err, 'OBJECT_CHANGED');
    assert.equal(bytes, 0);
  });

  it('sha256 differing from S3 checksum → CHECKSUM_MISMATCH at the end', async () => {
    const wrong = createHash('sha256').update('something else').digest('base64');
    const ref = { ...(await head()), checksumSha256: wrong };
    const { err, resultErr, bytes } = await drainExpectingError(emu.client, ref);
    assertImageError(err, 'CHECKSUM_MISMATCH');
    assert.equal(resultErr, err);
    assert.equal(bytes, data.length);

    const right = { ...ref, checksumSha256: createHash('sha256').update(data).digest('base64') };
    const { result } = await drain(emu.client, right);
    assert.equal(result.sha256, sha256hex(data));
  });

  it('consumer stopping early aborts the request: no socket left open, result rejects quietly', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({ cutAfterBytes: 0, cutConnections: 0 });
    const dl = downloadObject(client, ref);
    let seen = 0;
    for await (const chunk of dl.chunks) {
      seen += chunk.byteLength;
      break;
    }
    assert.ok(seen > 0 && seen < data.length);
    await c.waitForIdle(5000);
    assert.equal(c.active, 0);
    await assert.rejects(dl.result, { name: 'AbortError' });
  });

  it('consumer throwing in its loop: same, and its own error propagates', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({ cutAfterBytes: 0, cutConnections: 0 });
    const dl = downloadObject(client, ref);
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) {
          if (chunk.byteLength > 0) throw new Error('unpacker failed');
        }
      })(),
      /unpacker failed/,
    );
    await c.waitForIdle(5000);
    await assert.rejects(dl.result, { name: 'AbortError' });
  });

  it('an aborted signal stops the download with its reason and closes the socket', async () => {
    const ref = await head();
    const { cutter: c, client } = await cutter({ cutAfterBytes: 0, cutConnections: 0 });
    const ac = new AbortController();
    const reason = new Error('shutting down');
    const dl = downloadObject(client, ref, { signal: ac.signal });
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) {
          seen += chunk.byteLength;
          if (seen > MiB) ac.abort(reason);
        }
      })(),
      (err: unknown) => err === reason,
    );
    await assert.rejects(dl.result, (err: unknown) => err === reason);
    await c.waitForIdle(5000);
  });

  it('chunks can be iterated only once', async () => {
    await emu.putObject(BUCKET, 'images/empty-twice.tar', Buffer.alloc(0));
    const ref = await head('images/empty-twice.tar');
    const dl = downloadObject(emu.client, ref);
    for await (const chunk of dl.chunks) assert.fail(`empty, got ${chunk.byteLength} bytes`);
    assert.throws(() => dl.chunks[Symbol.asyncIterator](), /only be iterated once/);
    // A second iteration is the caller's bug, said as one (exit 70), not a download failure.
    assert.throws(
      () => dl.chunks[Symbol.asyncIterator](),
      (err: unknown) => err instanceof InternalError && err.code === 'INTERNAL',
    );
    assert.equal((await dl.result).size, 0);
  });

  it('a client built from the environment alone reaches the emulator (path style)', async () => {
    // localhost: virtual-hosted addressing would need <bucket>.localhost to
    // resolve, so this only passes if path style was chosen from the env.
    const env = s3EnvFor({ endpoint: `http://localhost:${emu.port}` });
    const saved = { ...process.env };
    Object.assign(process.env, env);
    delete process.env.AWS_ENDPOINT_URL;
    delete process.env.AWS_PROFILE;
    delete process.env.AWS_SESSION_TOKEN;
    delete process.env.THINRELAY_S3_FORCE_PATH_STYLE;
    const client = createS3Client({ maxAttempts: 1 });
    try {
      assert.equal(client.config.forcePathStyle, true);
      const ref = await headObject(client, BUCKET, 'images/big.tar', { maxBlobBytes: LIMIT });
      assert.equal(ref.eTag, eTag);
    } finally {
      client.destroy();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });
});

describe('S3 semantics s3rver lacks (stub server)', () => {
  let server: Server;
  let client: S3Client;
  let port: number;
  const body = Buffer.from('the pinned bytes');
  const sha = createHash('sha256').update(body).digest('base64');
  const big = randomBytes(300 * 1024);
  let headHeaders: Record<string, string> = {};
  const gets = new Map<string, number>();
  const ranges: (string | undefined)[] = [];

  before(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      const key = (req.url ?? '').split('?')[0]?.split('/').slice(2).join('/') ?? '';
      const content = key === 'k.tar' ? body : big;
      if (req.method === 'HEAD') {
        res.writeHead(200, {
          ETag: '"abc"',
          'Content-Length': String(content.length),
          'Last-Modified': new Date(0).toUTCString(),
          'x-amz-version-id': 'v1',
          ...(key === 'k.tar' ? headHeaders : {}),
        });
        res.end();
        return;
      }
      if (req.headers['if-match'] !== '"abc"') {
        res.writeHead(412, { 'Content-Type': 'application/xml' });
        res.end(
          '<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code>' +
            '<Message>At least one of the pre-conditions you specified did not hold</Message>' +
            '<Condition>If-Match</Condition></Error>',
        );
        return;
      }
      const n = (gets.get(key) ?? 0) + 1;
      gets.set(key, n);
      ranges.push(req.headers.range);
      const headers = { ETag: '"abc"', 'x-amz-version-id': 'v1' };
      if (key === 'ignore-range.tar') {
        // A store that ignores Range: always the whole object, 200.
        res.writeHead(200, { ...headers, 'Content-Length': String(content.length) });
        if (n === 1) {
          res.write(content.subarray(0, 100 * 1024), () => res.socket?.destroy());
        } else res.end(content);
        return;
      }
      if (key === 'stall.tar') {
        const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
        const from = m ? Number(m[1]) : 0;
        const part = content.subarray(from);
        res.writeHead(m ? 206 : 200, {
          ...headers,
          'Content-Length': String(part.length),
          ...(m
            ? { 'Content-Range': `bytes ${from}-${content.length - 1}/${content.length}` }
            : {}),
        });
        if (n === 1)
          res.write(part.subarray(0, 64 * 1024)); // then stall, forever
        else res.end(part);
        return;
      }
      res.writeHead(200, { ...headers, 'Content-Length': String(content.length) });
      res.end(content);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    ({ port } = server.address() as AddressInfo);
    client = createS3Client({
      endpoint: `http://127.0.0.1:${port}`,
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

  const headK = (key = 'k.tar'): Promise<ObjectRef> =>
    headObject(client, 'stub-bucket', key, { maxBlobBytes: LIMIT });

  it('head reads version and a FULL_OBJECT sha256, and the download checks it', async () => {
    headHeaders = { 'x-amz-checksum-sha256': sha, 'x-amz-checksum-type': 'FULL_OBJECT' };
    const ref = await headK();
    assert.equal(ref.versionId, 'v1');
    assert.equal(ref.checksumSha256, sha);
    assert.equal(ref.lastModified, new Date(0).toISOString());
    const { data: got, result } = await drain(client, ref);
    assert.ok(got.equals(body));
    assert.equal(result.sha256, createHash('sha256').update(body).digest('hex'));
  });

  it('head ignores composite checksums', async () => {
    headHeaders = { 'x-amz-checksum-sha256': `${sha}-3`, 'x-amz-checksum-type': 'COMPOSITE' };
    assert.equal((await headK()).checksumSha256, null);
    headHeaders = { 'x-amz-checksum-sha256': `${sha}-3` };
    assert.equal((await headK()).checksumSha256, null);
    headHeaders = {};
  });

  it('412 PreconditionFailed on GET → OBJECT_CHANGED, not retried', async () => {
    const ref = { ...(await headK()), eTag: '"stale"' };
    const { err } = await drainExpectingError(client, ref, { backoffMs: 1 });
    assertImageError(err, 'OBJECT_CHANGED');
    assert.ok(!(err instanceof TransientError), 'not a transient error');
  });

  it('a version other than the pinned one in the response → OBJECT_CHANGED', async () => {
    const ref = { ...(await headK()), versionId: 'v0' };
    const { err, bytes } = await drainExpectingError(client, ref);
    assertImageError(err, 'OBJECT_CHANGED');
    assert.equal(bytes, 0);
  });

  it('resumes against a store that ignores Range (drops the bytes it already has)', async () => {
    const ref = await headK('ignore-range.tar');
    const { data: got, result } = await drain(client, ref, { backoffMs: 1 });
    assert.ok(got.equals(big), 'bytes identical');
    assert.equal(result.resumes, 1);
    assert.equal(gets.get('ignore-range.tar'), 2);
  });

  it('a stalled body is noticed by the socket timeout and resumed', async () => {
    const impatient = createS3Client({
      endpoint: `http://127.0.0.1:${port}`,
      region: 'us-east-1',
      credentials: { accessKeyId: 'x', secretAccessKey: 'y' },
      maxAttempts: 1,
      requestHandler: { connectionTimeout: 1000, socketTimeout: 300 },
    });
    try {
      const ref = await headK('stall.tar');
      ranges.length = 0;
      const { data: got, result } = await drain(impatient, ref, { backoffMs: 1 });
      assert.ok(got.equals(big), 'bytes identical');
      assert.equal(result.resumes, 1);
      assert.deepEqual(ranges, [undefined, `bytes=${64 * 1024}-`]);
    } finally {
      impatient.destroy();
    }
  });
});
