/**
 * The download on a worker thread (source/worker-download.ts) through a link
 * proxy in front of the S3 emulator: bytes in order across ranges, bounded
 * read-ahead when the consumer is slow, a broken range resumed alone, an
 * overwrite mid-download failing OBJECT_CHANGED, S3 errors arriving as the
 * same typed errors, and a worker that dies: a host fault
 * (DOWNLOAD_WORKER_FAILED), from the library and from the bundled CLI, with
 * nothing left behind. An unpack that fails mid-download (a bad archive, or a
 * host fault before the first byte is read) stops the worker: the CLI exits
 * by itself with nothing left.
 */
import { after, afterEach, before, describe, it, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  ImageError,
  TemporaryEnvironmentError,
  TransientError,
} from '../../host-agent/src/errors.js';
import { classifyFailure } from '../../host-agent/src/pipeline/failure.js';
import { headObject } from '../../host-agent/src/source/head.js';
import type { ObjectRef } from '../../host-agent/src/source/object-ref.js';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';
import { downloadInWorker } from '../../host-agent/src/source/worker-download.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { startLinkProxy, type LinkProxy, type LinkProxyOptions } from '../helpers/link-proxy.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { corruptChecksum, gzip, packTar } from '../helpers/tar-fixtures.js';

const BUCKET = 'thinrelay-worker-download';
const KiB = 1024;
const MiB = 1024 * KiB;
const PART = 256 * KiB;
const never = new AbortController().signal;

const unhandled: unknown[] = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));

const sha256hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** `bytes=a-b` / `bytes=a-` → [a, b] (b = size - 1 when open). */
function rangeOf(header: string | undefined, size: number): [number, number] {
  if (header === undefined) return [0, size - 1];
  const m = /^bytes=(\d+)-(\d*)$/.exec(header);
  assert.ok(m, `unexpected Range ${header}`);
  return [Number(m[1]), m[2] === '' ? size - 1 : Number(m[2])];
}

describe('download on a worker thread (s3rver behind a link proxy)', () => {
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
    delete process.env.THINRELAY_CRASH_AT;
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

  const head = (key = 'images/rootfs.tar'): Promise<ObjectRef> =>
    headObject(emu.client, BUCKET, key, { maxBlobBytes: 64 * MiB });

  async function drain(
    client: S3Client,
    ref: ObjectRef,
    opts: Parameters<typeof downloadInWorker>[2],
  ): Promise<{ data: Buffer; sha256: string; resumes: number }> {
    const dl = downloadInWorker(client, ref, opts);
    const parts: Buffer[] = [];
    for await (const chunk of dl.chunks) parts.push(Buffer.from(chunk));
    const r = await dl.result;
    return { data: Buffer.concat(parts), sha256: r.sha256, resumes: r.resumes };
  }

  it('hands the bytes over in order across ranges, every GET pinned, digest verified', async () => {
    const ref = await head();
    const { proxy, client } = await link();
    let last = 0;
    const got = await drain(client, ref, {
      partSize: PART,
      concurrency: 4,
      onBytes: (n) => {
        assert.ok(n > last, 'onBytes counts up');
        last = n;
      },
    });
    assert.ok(got.data.equals(data), 'the same bytes in the same order');
    assert.equal(got.sha256, sha256hex(data));
    assert.equal(last, data.length);
    const gets = proxy.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 17, 'one GET per part');
    for (const g of gets) assert.equal(g.headers['if-match'], ref.eTag);
    const ranges = gets
      .map((g) => rangeOf(g.headers.range, data.length))
      .sort((a, b) => a[0] - b[0]);
    let next = 0;
    for (const [a, b] of ranges) {
      assert.equal(a, next, 'ranges tile the object');
      next = b + 1;
    }
    assert.equal(next, data.length);
  });

  it('back-pressure: a consumer that stops taking bytes stops the worker fetching (bounded read-ahead)', async () => {
    const big = randomBytes(64 * PART); // 16 MiB
    await emu.putObject(BUCKET, 'images/big.tar', big);
    const ref = await head('images/big.tar');
    const { proxy, client } = await link({ bytesPerSecond: Infinity, latencyMs: 0 });
    const readAhead = 512 * KiB;
    const concurrency = 4;
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency, readAhead });
    const seen: Buffer[] = [];
    let consumed = 0;
    let stalled = false;
    for await (const chunk of dl.chunks) {
      seen.push(Buffer.from(chunk));
      consumed += chunk.byteLength;
      if (!stalled) {
        stalled = true;
        // A stalled unpacker: the worker may run ahead by the read-ahead, one slice it is
        // gathering (1 MiB), and the parts in flight (concurrency × part), no more.
        await new Promise((r) => setTimeout(r, 1500));
        const ahead = proxy.responseBytes - consumed;
        const bound = readAhead + MiB + concurrency * PART + 64 * KiB;
        assert.ok(ahead <= bound, `fetched ${ahead} bytes ahead of the consumer (bound ${bound})`);
        assert.ok(proxy.responseBytes < big.length / 2, 'far from the whole object');
      }
    }
    assert.ok(Buffer.concat(seen).equals(big));
    assert.equal((await dl.result).sha256, sha256hex(big));
  });

  it('a range that breaks mid-way is resumed alone in the worker, from where it broke', async () => {
    const ref = await head();
    const broken = `bytes=${3 * PART}-${4 * PART - 1}`;
    let cut = false;
    const { proxy, client } = await link({
      cutResponse: (req) => {
        if (cut || req.headers.range !== broken) return undefined;
        cut = true;
        return 100 * KiB;
      },
    });
    const got = await drain(client, ref, { partSize: PART, concurrency: 4, backoffMs: 1 });
    assert.ok(got.data.equals(data), 'bytes identical');
    assert.equal(got.sha256, sha256hex(data));
    assert.equal(got.resumes, 1);
    const gets = proxy.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 18, '17 parts + one resume');
    const ofPart3 = gets.filter((g) => rangeOf(g.headers.range, data.length)[1] === 4 * PART - 1);
    assert.equal(ofPart3.length, 2, 'only the broken part was asked again');
    const [from] = rangeOf(ofPart3[1]?.headers.range, data.length);
    assert.ok(from > 3 * PART && from < 4 * PART - 1, `resumed inside the part, at ${from}`);
  });

  it('an overwrite mid-download fails OBJECT_CHANGED (the same typed error); only pinned bytes handed over', async () => {
    const key = 'images/overwritten.tar';
    const original = randomBytes(16 * PART);
    await emu.putObject(BUCKET, key, original);
    const ref = await head(key);
    let cut = false;
    const { client } = await link({
      bytesPerSecond: 4 * 1024 * KiB,
      cutResponse: (req) => {
        if (cut || req.headers.range !== `bytes=${2 * PART}-${3 * PART - 1}`) return undefined;
        cut = true;
        return 64 * KiB;
      },
      onCut: async () => void (await emu.putObject(BUCKET, key, randomBytes(original.length))),
    });
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency: 4, backoffMs: 1 });
    const seen: Buffer[] = [];
    let err: unknown = null;
    try {
      for await (const chunk of dl.chunks) seen.push(Buffer.from(chunk));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, 'OBJECT_CHANGED');
    assert.equal(classifyFailure(err, never), 'superseded');
    await assert.rejects(dl.result, (e: unknown) => e === err);
    const handed = Buffer.concat(seen);
    assert.ok(handed.length < original.length, 'stopped before the end');
    assert.ok(handed.equals(original.subarray(0, handed.length)), 'nothing mixed');
  });

  it('an object deleted since the HEAD fails OBJECT_NOT_FOUND, an image code, across the boundary', async () => {
    const key = 'images/deleted.tar';
    await emu.putObject(BUCKET, key, randomBytes(4 * PART));
    const ref = await head(key);
    await emu.client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: key }));
    const { client } = await link();
    await assert.rejects(
      drain(client, ref, { partSize: PART, concurrency: 4 }),
      (e: unknown) => e instanceof ImageError && e.code === 'OBJECT_NOT_FOUND',
    );
  });

  it('the worker dying mid-download is a host fault (DOWNLOAD_WORKER_FAILED), nothing fetched after', async () => {
    const ref = await head();
    process.env.THINRELAY_CRASH_AT = 'download:worker'; // read by the worker when it starts
    const { proxy, client } = await link({ bytesPerSecond: 4 * 1024 * KiB });
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency: 4 });
    delete process.env.THINRELAY_CRASH_AT;
    let err: unknown = null;
    try {
      for await (const chunk of dl.chunks) assert.ok(chunk.byteLength > 0);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof TemporaryEnvironmentError, String(err));
    assert.equal(err.code, 'DOWNLOAD_WORKER_FAILED');
    assert.equal(classifyFailure(err, never), 'transient', 'retried: never blamed on the image');
    await assert.rejects(dl.result, (e: unknown) => e === err);
    const asked = proxy.requests.length;
    const sent = proxy.responseBytes;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(proxy.requests.length, asked, 'no request after the worker died');
    assert.equal(proxy.responseBytes, sent, 'no byte flows to a dead worker');
  });

  it('a consumer that stops early terminates the worker: no further requests', async () => {
    const ref = await head();
    const { proxy, client } = await link({ bytesPerSecond: 2 * 1024 * KiB });
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency: 4 });
    for await (const chunk of dl.chunks) {
      assert.ok(chunk.byteLength > 0);
      break;
    }
    await assert.rejects(dl.result, { name: 'AbortError' });
    const asked = proxy.requests.length;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(proxy.requests.length, asked, 'nothing requested after the consumer left');
  });

  it('a consumer that stops at the last slice gets no verdict (AbortError), as on the main thread', async () => {
    const ref = await head();
    const { client } = await link({ bytesPerSecond: Infinity, latencyMs: 0 });
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency: 4 });
    let got = 0;
    for await (const chunk of dl.chunks) {
      got += chunk.byteLength;
      if (got === data.length) break;
    }
    assert.equal(got, data.length);
    await assert.rejects(dl.result, { name: 'AbortError' });
  });

  it('the signal stops it with its own reason', async () => {
    const ref = await head();
    const { client } = await link({ bytesPerSecond: 2 * 1024 * KiB });
    const ac = new AbortController();
    const dl = downloadInWorker(client, ref, { partSize: PART, concurrency: 4, signal: ac.signal });
    const reason = new Error('stop now');
    await assert.rejects(
      (async () => {
        for await (const chunk of dl.chunks) {
          assert.ok(chunk.byteLength > 0);
          ac.abort(reason);
        }
      })(),
      (e: unknown) => e === reason,
    );
    await assert.rejects(dl.result, (e: unknown) => e === reason);
  });
});

describe('download on a worker thread: S3 errors keep their meaning (stub server)', () => {
  let server: Server;
  let client: S3Client;
  const content = randomBytes(4 * PART);
  const etag = '"w1"';
  const gets = new Map<string, number>();

  before(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      const key = (req.url ?? '').split('?')[0]?.split('/').slice(2).join('/') ?? '';
      const n = (gets.get(key) ?? 0) + 1;
      gets.set(key, n);
      const xml = (status: number, code: string): void => {
        res.writeHead(status, { 'Content-Type': 'application/xml' });
        res.end(
          `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`,
        );
      };
      if (key === 'slowdown.tar' && n <= 2) return xml(503, 'SlowDown');
      if (key === 'denied.tar') return xml(403, 'AccessDenied');
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      const from = m ? Number(m[1]) : 0;
      const to = m && m[2] !== '' ? Number(m[2]) : content.length - 1;
      res.writeHead(m ? 206 : 200, {
        ETag: etag,
        'Content-Length': String(to - from + 1),
        ...(m ? { 'Content-Range': `bytes ${from}-${to}/${content.length}` } : {}),
      });
      res.end(content.subarray(from, to + 1));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    client = createS3Client({
      endpoint: `http://127.0.0.1:${port}`,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'x', secretAccessKey: 'y' },
      maxAttempts: 1,
    });
  });
  after(async () => {
    client?.destroy();
    server?.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const ref = (key: string, checksumSha256: string | null = null): ObjectRef => ({
    bucket: 'stub',
    key,
    versionId: null,
    eTag: etag,
    size: content.length,
    checksumSha256,
    lastModified: null,
  });
  async function drain(r: ObjectRef): Promise<{ data: Buffer; resumes: number }> {
    const dl = downloadInWorker(client, r, { partSize: PART, concurrency: 4, backoffMs: 1 });
    const parts: Buffer[] = [];
    for await (const chunk of dl.chunks) parts.push(Buffer.from(chunk));
    return { data: Buffer.concat(parts), resumes: (await dl.result).resumes };
  }

  it('SlowDown (503) is backed off and retried in the worker, then the bytes arrive', async () => {
    const got = await drain(ref('slowdown.tar'));
    assert.ok(got.data.equals(content));
    assert.equal(got.resumes, 2, 'two throttled answers, two retries');
  });

  it('AccessDenied (403) arrives as ImageError ACCESS_DENIED, permanent', async () => {
    await assert.rejects(drain(ref('denied.tar')), (e: unknown) => {
      assert.ok(e instanceof ImageError && !(e instanceof TransientError), String(e));
      assert.equal(e.code, 'ACCESS_DENIED');
      assert.equal(classifyFailure(e, never), 'permanent');
      return true;
    });
  });

  it('the digest is verified in the worker before the end: a wrong S3 sha256 is CHECKSUM_MISMATCH', async () => {
    const wrong = createHash('sha256').update('other bytes').digest('base64');
    await assert.rejects(
      drain(ref('ok.tar', wrong)),
      (e: unknown) => e instanceof ImageError && e.code === 'CHECKSUM_MISMATCH',
    );
    const right = createHash('sha256').update(content).digest('base64');
    assert.ok((await drain(ref('ok.tar', right))).data.equals(content));
  });
});

const needs = needsRootAndTools(['mkfs.ext4', 'losetup']);

/** The S3 emulator with the bucket, and a state dir for the bundled CLI: both released in t.after. */
async function cliHost(
  t: TestContext,
): Promise<{ emu: S3Emulator; stateDir: string; env: Record<string, string> }> {
  const emu = await startS3Emulator();
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-worker-download-'));
  const env = {
    ...s3EnvFor(emu),
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_BUCKET: BUCKET,
    THINRELAY_RESERVE_BYTES: '0',
    THINRELAY_VOLUME_SIZE: '64M',
    THINRELAY_DOWNLOAD_PART_SIZE: '1M',
  };
  t.after(async () => {
    await runCli(['pool', 'destroy', '--force'], env);
    releaseStateDir(stateDir);
    await emu.stop();
  });
  await emu.createBucket(BUCKET);
  return { emu, stateDir, env };
}

test(
  'bundled CLI: a worker that dies mid-download fails process-image as the host’s fault (exit 75), releases everything; a rerun succeeds (a small object: on the main thread)',
  { skip: needs, timeout: 300_000 },
  async (t) => {
    const { emu, stateDir, env } = await cliHost(t);
    const tar = await packTar([
      { name: 'etc/hostname', content: Buffer.from('worker\n') },
      { name: 'opt/blob.bin', content: randomBytes(12 * MiB) },
    ]);
    await emu.putObject(BUCKET, 'images/crash.tar', tar);
    const before = hostInventory(stateDir);
    const crashed = await runCli(['process-image', '--s3-key', 'images/crash.tar'], {
      ...env,
      THINRELAY_DOWNLOAD_THREAD: '1', // 12 MiB is below the worker's threshold: force it
      THINRELAY_CRASH_AT: 'download:worker',
    });
    assert.equal(crashed.code, 75, crashed.stderr);
    assert.match(crashed.stderr, /DOWNLOAD_WORKER_FAILED/);
    assert.deepEqual(hostInventory(stateDir), before, 'nothing left behind');
    // The rerun, by default: an object under 64 MiB is fetched on the main thread, so the
    // worker's crash point is never reached.
    const ok = await runCli(['process-image', '--s3-key', 'images/crash.tar', '--json'], {
      ...env,
      THINRELAY_CRASH_AT: 'download:worker',
    });
    assert.equal(ok.code, 0, ok.stderr);
    const out = JSON.parse(ok.stdout) as { sha256?: string };
    assert.equal(out.sha256, sha256hex(tar));
  },
);

/**
 * process-image of `object` on a worker download, failing: with `expected`'s exit code and
 * stderr, the worker stopped (the CLI exits by itself, promptly) and nothing left behind.
 */
async function failsAndExits(
  t: TestContext,
  object: Buffer,
  expected: { code?: number; stderr: RegExp },
  extraEnv: Record<string, string> = {},
): Promise<void> {
  const { emu, stateDir, env } = await cliHost(t);
  await emu.putObject(BUCKET, 'images/broken', object);
  const before = hostInventory(stateDir);
  const started = Date.now();
  const r = await runCli(
    ['process-image', '--s3-key', 'images/broken'],
    // Below the worker's 64 MiB threshold: force it.
    { ...env, THINRELAY_DOWNLOAD_THREAD: '1', ...extraEnv },
    { timeoutMs: 60_000 },
  );
  const took = Date.now() - started;
  assert.equal(
    r.timedOut,
    undefined,
    `the CLI did not exit by itself (a live worker): ${r.stderr}`,
  );
  assert.ok(took < 30_000, `exited after ${took} ms`);
  if (expected.code !== undefined) assert.equal(r.code, expected.code, r.stderr);
  else assert.notEqual(r.code, 0, r.stderr);
  assert.match(r.stderr, expected.stderr);
  assert.deepEqual(hostInventory(stateDir), before, 'no loop device, mount or pool file left');
  const spools = join(stateDir, 'spool');
  assert.deepEqual(existsSync(spools) ? readdirSync(spools) : [], [], 'no spool left');
}

/** A bad image: exit 1 with its reason code. */
const badImage = (code: string): { code: number; stderr: RegExp } => ({
  code: 1,
  stderr: new RegExp(`\\[${code}\\]`),
});

/** A flat tar of two members, 2 MiB then 20 MiB, random (so gzip does not shrink them). */
const twoMembers = (): Promise<Buffer> =>
  packTar([
    { name: 'etc/hostname', content: Buffer.from('worker\n') },
    { name: 'opt/a.bin', content: randomBytes(2 * MiB) },
    { name: 'opt/b.bin', content: randomBytes(20 * MiB) },
  ]);

/** `bytes` with 4 KiB of garbage at `at`: a gzip stream breaks there. */
function garbled(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy.fill(0xa5, at, at + 4096);
  return copy;
}

describe(
  'bundled CLI: an archive that breaks mid-stream on a worker download',
  { skip: needs },
  () => {
    it(
      'a flat tar with a bad header 2 MiB in: ARCHIVE_MALFORMED, the worker stopped, nothing left',
      { timeout: 300_000 },
      async (t) => {
        const tar = await twoMembers();
        // The third member's header breaks (its checksum): the unpacker fails 2 MiB in, with
        // 20 MiB still to come, so the worker is held back by its read-ahead, mid-download.
        const header = tar.indexOf('opt/b.bin');
        assert.ok(header > 2 * MiB && header % 512 === 0, `header of opt/b.bin at ${header}`);
        await failsAndExits(t, corruptChecksum(tar, header), badImage('ARCHIVE_MALFORMED'));
      },
    );

    it(
      'a gzip flat tar whose deflate data breaks 2 MiB in: ARCHIVE_MALFORMED, the worker stopped, nothing left',
      { timeout: 300_000 },
      async (t) => {
        await failsAndExits(
          t,
          garbled(gzip(await twoMembers()), 2 * MiB),
          badImage('ARCHIVE_MALFORMED'),
        );
      },
    );

    it(
      'a gzip oci-archive whose deflate data breaks 2 MiB in (while spooling): ARCHIVE_MALFORMED, the worker stopped, no spool left',
      { timeout: 300_000 },
      async (t) => {
        const archive = await ociArchiveOfLayers([await twoMembers()]);
        await failsAndExits(t, garbled(gzip(archive), 2 * MiB), badImage('ARCHIVE_MALFORMED'));
      },
    );

    it(
      'a host fault before the flat tar is read (its volume cannot be made): the worker stopped all the same, nothing left',
      { timeout: 300_000 },
      async (t) => {
        // 16 KiB is too small for mkfs.ext4: the unpack fails after the sniff, before reading on.
        await failsAndExits(
          t,
          await twoMembers(),
          // The host's fault, not the image's: exit 3 with the tool named, never exit 1 "unexpected".
          { code: 3, stderr: /\[TOOL_FAILED\] mkfs\.ext4 .* failed \(exit \d+\)/ },
          {
            THINRELAY_VOLUME_SIZE: '16K',
          },
        );
      },
    );
  },
);
