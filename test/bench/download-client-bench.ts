/**
 * Bench (issue 23, "cheaper bytes"): the HTTP client under the ranged
 * download. The same pinned ranged GETs (8 MiB parts, 4 in flight, If-Match,
 * SigV4) of one object on the S3 emulator, made by the SDK's GetObject (what
 * get-range.ts does), by node:http with a keep-alive agent and by Node's
 * fetch (undici), each in a child process of its own, alternating, median of
 * THINRELAY_BENCH_REPS (3). Prints MB/s and the client's CPU seconds per GiB
 * (user + system of the child: the emulator runs in this process, not
 * counted). The bytes are counted and dropped: what is measured is the
 * client, not hashing or unpacking.
 *
 *   node dist/test/bench/download-client-bench.js [FILE]   # default: the bench rootfs tar, else 201 MiB random
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import {
  createReadStream,
  existsSync,
  mkdtempSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { Agent, request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';

const execFileAsync = promisify(execFile);
const PART = 8 * 1024 * 1024;
const IN_FLIGHT = 4;
const CLIENTS = ['sdk', 'node:http', 'fetch'] as const;
type ClientName = (typeof CLIENTS)[number];

interface ChildResult {
  bytes: number;
  ms: number;
  cpuS: number;
  maxRssBytes: number;
}

/** SigV4 headers for a GET of `path` (already URI-encoded) on `host`. */
function signedHeaders(
  host: string,
  path: string,
  extra: Record<string, string>,
): Record<string, string> {
  const accessKey = process.env.AWS_ACCESS_KEY_ID!;
  const secret = process.env.AWS_SECRET_ACCESS_KEY!;
  const region = process.env.AWS_REGION ?? 'us-east-1';
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  const day = amzDate.slice(0, 8);
  const headers: Record<string, string> = {
    host,
    'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
    'x-amz-date': amzDate,
    ...Object.fromEntries(Object.entries(extra).map(([k, v]) => [k.toLowerCase(), v])),
  };
  const names = Object.keys(headers).sort();
  const canonical = [
    'GET',
    path,
    '',
    ...names.map((n) => `${n}:${headers[n]!.trim()}`),
    '',
    names.join(';'),
    'UNSIGNED-PAYLOAD',
  ].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = [
    'AWS4-HMAC-SHA256',
    amzDate,
    scope,
    createHash('sha256').update(canonical).digest('hex'),
  ].join('\n');
  let key: Buffer = createHmac('sha256', `AWS4${secret}`).update(day).digest();
  for (const part of [region, 's3', 'aws4_request'])
    key = createHmac('sha256', key).update(part).digest();
  const signature = createHmac('sha256', key).update(toSign).digest('hex');
  headers.authorization = `AWS4-HMAC-SHA256 Credential=${accessKey}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`;
  return headers;
}

/** One ranged GET, its body consumed; returns the bytes received. */
type GetRange = (start: number, end: number) => Promise<number>;

function rangeGetter(
  which: ClientName,
  bucket: string,
  key: string,
  eTag: string,
): { get: GetRange; close: () => void } {
  const endpoint = new URL(process.env.AWS_ENDPOINT_URL_S3!);
  const path = `/${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
  const expect = (status: number, start: number, end: number, got: number): number => {
    if (status !== 206 || got !== end - start + 1)
      throw new Error(`range ${start}-${end}: status ${status}, ${got} bytes`);
    return got;
  };
  if (which === 'sdk') {
    const client = createS3Client();
    return {
      get: async (start, end) => {
        const out = await client.send(
          new GetObjectCommand({
            Bucket: bucket,
            Key: key,
            IfMatch: eTag,
            Range: `bytes=${start}-${end}`,
          }),
        );
        let n = 0;
        for await (const c of out.Body as AsyncIterable<Uint8Array>) n += c.byteLength;
        return expect(out.$metadata.httpStatusCode ?? 0, start, end, n);
      },
      close: () => client.destroy(),
    };
  }
  if (which === 'node:http') {
    const agent = new Agent({ keepAlive: true, maxSockets: 50 });
    return {
      get: (start, end) =>
        new Promise<number>((resolve, reject) => {
          const headers = signedHeaders(endpoint.host, path, {
            range: `bytes=${start}-${end}`,
            'if-match': eTag,
          });
          const req = request(
            { host: endpoint.hostname, port: endpoint.port, path, headers, agent },
            (res) => {
              void (async () => {
                let n = 0;
                for await (const c of res as AsyncIterable<Buffer>) n += c.byteLength;
                return expect(res.statusCode ?? 0, start, end, n);
              })().then(resolve, reject);
            },
          );
          req.on('error', reject);
          req.end();
        }),
      close: () => agent.destroy(),
    };
  }
  return {
    get: async (start, end) => {
      const headers = signedHeaders(endpoint.host, path, {
        range: `bytes=${start}-${end}`,
        'if-match': eTag,
      });
      delete headers.host; // fetch sets it; it is forbidden as a request header
      const res = await fetch(new URL(path, endpoint), { headers });
      let n = 0;
      for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) n += c.byteLength;
      return expect(res.status, start, end, n);
    },
    close: () => undefined,
  };
}

async function child(which: ClientName, bucket: string, key: string, size: number, eTag: string) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const { get, close } = rangeGetter(which, bucket, key, eTag);
  let next = 0;
  let bytes = 0;
  const lane = async (): Promise<void> => {
    while (next < size) {
      const start = next;
      const end = Math.min(size, start + PART) - 1;
      next = end + 1;
      const n = await get(start, end); // not `bytes += await …`: lanes would lose updates
      bytes += n;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
  close();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const result: ChildResult = {
    bytes,
    ms,
    cpuS: (cpu.user + cpu.system) / 1e6,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

async function main(): Promise<void> {
  const reps = Number(process.env.THINRELAY_BENCH_REPS ?? '3');
  const cacheTar = '/var/cache/thinrelay-bench/bookworm-minbase.tar';
  let file = process.argv[2] ?? (existsSync(cacheTar) ? cacheTar : null);
  const scratch = mkdtempSync(join(tmpdir(), 'thinrelay-client-bench-'));
  const s3 = await startS3Emulator();
  try {
    if (file === null) {
      file = join(scratch, 'random.bin');
      writeFileSync(file, randomBytes(201 * 1024 * 1024));
    }
    const size = statSync(file).size;
    const bucket = 'client-bench';
    const key = 'images/object.tar';
    await s3.createBucket(bucket);
    const put = await s3.client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: createReadStream(file),
        ContentLength: size,
      }),
    );
    const env = { ...process.env, ...s3EnvFor(s3) };
    const self = fileURLToPath(import.meta.url);
    const runs = new Map<ClientName, ChildResult[]>(CLIENTS.map((c) => [c, []]));
    const load0 = loadavg()[0]!;
    for (let i = 0; i < reps; i++) {
      const order = i % 2 === 0 ? [...CLIENTS] : [...CLIENTS].reverse();
      for (const which of order) {
        // Async: the emulator in this process must keep serving.
        const { stdout } = await execFileAsync(
          process.execPath,
          [self, '--child', which, bucket, key, String(size), put.ETag!],
          { env },
        );
        runs.get(which)!.push(JSON.parse(stdout) as ChildResult);
      }
    }
    const GiB = 1024 ** 3;
    console.log(
      `ranged GETs of ${(size / 1024 ** 2).toFixed(0)} MiB, ${PART / 1024 ** 2} MiB parts, ${IN_FLIGHT} in flight, ` +
        `median of ${reps}; load ${load0.toFixed(2)} -> ${loadavg()[0]!.toFixed(2)}`,
    );
    const sdk = runs.get('sdk')!;
    const sdkCpu = median(sdk.map((r) => r.cpuS / (r.bytes / GiB)));
    for (const which of CLIENTS) {
      const rs = runs.get(which)!;
      const mbps = median(rs.map((r) => r.bytes / 1e6 / (r.ms / 1000)));
      const cpu = median(rs.map((r) => r.cpuS / (r.bytes / GiB)));
      const rss = Math.max(...rs.map((r) => r.maxRssBytes)) / 1024 ** 2;
      console.log(
        `${which.padEnd(10)} ${mbps.toFixed(0).padStart(5)} MB/s  ${cpu.toFixed(2)} CPU s/GiB ` +
          `(${((cpu / sdkCpu) * 100).toFixed(0)} % of the SDK's)  peak RSS ${rss.toFixed(0)} MiB  ` +
          `runs ${rs.map((r) => (r.ms / 1000).toFixed(2)).join(' ')} s`,
      );
    }
  } finally {
    await s3.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  const [, which, bucket, key, size, eTag] = process.argv.slice(2);
  await child(which as ClientName, bucket!, key!, Number(size), eTag!);
} else {
  await main();
}
