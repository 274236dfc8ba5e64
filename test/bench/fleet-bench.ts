/**
 * npm run bench:fleet: what the fleet view and the bucket sync cost at fleet
 * scale, as counts (requests, items) and ratios against what an operator
 * would otherwise run, on this machine's emulators (127.0.0.1).
 *
 * - `thinrelay fleet status KEY --json` and `thinrelay fleet hosts --json`
 *   over a fleet table (dynalite, in this process) holding 1,000 hosts with
 *   20 images each, written directly: whole CLI processes, start to exit,
 *   side by side with the AWS CLI reading the same items raw
 *   (`aws dynamodb query` on the byImage index, `aws dynamodb scan`), which
 *   gives no live/stale verdict, no target version and no counts.
 * - Listing a 10,000-key bucket (s3rver) with ListObjectsV2 pages, as the
 *   agent's sync round does, against checking each key with HeadObject.
 *
 * Not part of npm test: figures, not assertions (each measurement checks its
 * answer: the counts, the number of hosts, the number of keys).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { FleetReader } from '../../host-agent/src/fleet/fleet-reader.js';
import { imageStatus } from '../../host-agent/src/fleet/fleet-view.js';
import { createFleetTable, startDynamoEmulator } from '../helpers/dynamo-emulator.js';
import { cliPath } from '../helpers/cli.js';
import {
  deploymentConfig,
  hostImageItem,
  hostItem,
  putItems,
  rolloutItem,
} from '../helpers/fleet-items.js';
import { startS3Emulator } from '../helpers/s3-emulator.js';
import { formatTable, machine, row, writeResults, type BenchRow } from './fanout-bench.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const HOSTS = 1000;
const IMAGES_PER_HOST = 20;
const KEYS = 10_000;
const RUNS = Number(process.env.THINRELAY_BENCH_REPS ?? '5');
const KEY = 'images/app-00.tar';
const aws = existsSync('/usr/bin/aws') ? '/usr/bin/aws' : 'aws';
const run = promisify(execFile);

/** Wall time of a whole process, start to exit; rejects on a non-zero exit. */
function timeProcess(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ ms: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve({ ms: performance.now() - t0, stdout })
        : reject(new Error(`${file} ${args.join(' ')} exited ${code}: ${stderr}`)),
    );
  });
}

async function repeat(
  fn: () => Promise<{ ms: number; stdout: string }>,
  check: (stdout: string) => void,
): Promise<number[]> {
  check((await fn()).stdout); // warm-up, unrecorded (page cache, dynalite's first reads)
  const runs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await fn();
    check(r.stdout);
    runs.push(r.ms);
  }
  return runs;
}

function expectEqual(what: string, actual: unknown, expected: unknown): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected))
    throw new Error(`${what}: got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}

async function fleetView(rows: BenchRow[], notes: string[]): Promise<void> {
  const dynamo = await startDynamoEmulator();
  try {
    const table = 'bench-fleet';
    await createFleetTable(dynamo.client, table);
    const now = Date.now();
    const items: object[] = [deploymentConfig()];
    const queues: string[] = [];
    for (let h = 0; h < HOSTS; h++) {
      const id = `i-${h.toString(16).padStart(17, '0')}`;
      // 20 hosts went silent 10 minutes ago: stale, not counted.
      items.push(
        hostItem(id, {
          lastSeenAt: h < 20 ? now - 600_000 : now,
          pool: {
            dataUsedBytes: 2e10,
            dataTotalBytes: 1e11,
            metadataUsedBytes: 1e7,
            metadataTotalBytes: 1e9,
          },
        }),
      );
      queues.push(`thinrelay-host-default-${id}`);
      for (let i = 0; i < IMAGES_PER_HOST; i++) {
        const key = `images/app-${String(i).padStart(2, '0')}.tar`;
        const state =
          i === 0 && h % 100 === 50 ? 'failed' : i === 0 && h % 100 === 99 ? 'processing' : 'ready';
        items.push(
          hostImageItem(id, key, state, {
            ...(state === 'failed'
              ? { reasonCode: 'VOLUME_FULL', message: 'the pool has no room' }
              : {}),
          }),
        );
      }
    }
    items.push(rolloutItem(KEY, '0001', queues));
    const t0 = performance.now();
    await putItems(dynamo.client, table, items);
    notes.push(
      `fleet table: ${HOSTS} hosts × ${IMAGES_PER_HOST} images = ${items.length} items, written in ${((performance.now() - t0) / 1000).toFixed(1)} s (BatchWriteItem).`,
    );

    // The counts the CLI must report (and the requests it needs), read once in-process.
    const reader = new FleetReader(dynamo.client, table);
    const [config, hosts, imageItems, rollout] = await Promise.all([
      reader.config(),
      reader.hosts(),
      reader.imageItems(KEY),
      reader.latestPutRollout(KEY),
    ]);
    const expected = imageStatus({
      key: KEY,
      config,
      hosts,
      items: imageItems,
      rollout,
      now: Date.now(),
    }).counts;
    const statusRequests = reader.requests;
    reader.requests = 0;
    await reader.snapshot();
    const hostsRequests = reader.requests;

    const env = {
      ...process.env,
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      AWS_ACCESS_KEY_ID: 'bench',
      AWS_SECRET_ACCESS_KEY: 'bench',
      AWS_REGION: 'us-east-1',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_PAGER: '',
      THINRELAY_FLEET_TABLE: table,
      THINRELAY_LOG_LEVEL: 'warn',
    };
    const awsBase = ['--endpoint-url', dynamo.endpoint, '--output', 'json', 'dynamodb'];
    const status = await repeat(
      () => timeProcess(process.execPath, [cliPath, 'fleet', 'status', KEY, '--json'], env),
      (out) =>
        expectEqual(
          'fleet status counts',
          (JSON.parse(out) as { counts: unknown }).counts,
          expected,
        ),
    );
    const awsQuery = await repeat(
      () =>
        timeProcess(
          aws,
          [
            ...awsBase,
            'query',
            '--table-name',
            table,
            '--index-name',
            'byImage',
            '--key-condition-expression',
            'gpk = :g',
            '--expression-attribute-values',
            JSON.stringify({ ':g': { S: `IMAGE#${KEY}` } }),
          ],
          env,
        ),
      (out) =>
        expectEqual(
          'aws query items',
          (JSON.parse(out) as { Items: unknown[] }).Items.length,
          HOSTS,
        ),
    );
    rows.push(
      row({
        section: 'fleet view (dynalite)',
        scenario: `fleet status KEY --json (${statusRequests} requests)`,
        hosts: HOSTS,
        messages: null,
        runsMs: status,
        alternative: { label: 'aws dynamodb query byImage (raw items)', runsMs: awsQuery },
      }),
    );
    const hostsRuns = await repeat(
      () => timeProcess(process.execPath, [cliPath, 'fleet', 'hosts', '--json'], env),
      (out) =>
        expectEqual('fleet hosts counts', (JSON.parse(out) as { counts: unknown }).counts, {
          hosts: HOSTS,
          live: HOSTS - 20,
          stale: 20,
          gone: 0,
        }),
    );
    const awsScan = await repeat(
      () => timeProcess(aws, [...awsBase, 'scan', '--table-name', table], env),
      (out) =>
        expectEqual('aws scan items', (JSON.parse(out) as { Count: number }).Count, items.length),
    );
    rows.push(
      row({
        section: 'fleet view (dynalite)',
        scenario: `fleet hosts --json (${hostsRequests} requests)`,
        hosts: HOSTS,
        messages: null,
        runsMs: hostsRuns,
        alternative: { label: 'aws dynamodb scan (raw items)', runsMs: awsScan },
      }),
    );
    const startup = await repeat(
      () => timeProcess(process.execPath, [cliPath, '--help'], env),
      () => {},
    );
    rows.push(
      row({
        section: 'fleet view (dynalite)',
        scenario: 'thinrelay --help (process start only)',
        hosts: null,
        messages: null,
        runsMs: startup,
      }),
    );
    const { stdout: awsVersion } = await run(aws, ['--version'], { env });
    notes.push(
      `fleet status reads the deployment item, the host items (a filtered Scan: the table has no index by host, so it reads all ${items.length} items in 1 MB pages), the image's items (one Query on byImage) and the newest rollout; fleet hosts scans the table once. The alternative is ${awsVersion.trim()} printing the raw items: no live/stale verdict, no target version, no counts.`,
    );
  } finally {
    await dynamo.stop();
  }
}

async function bucketListing(rows: BenchRow[], notes: string[]): Promise<void> {
  const s3 = await startS3Emulator();
  try {
    const bucket = 'bench-sync';
    await s3.createBucket(bucket);
    const t0 = performance.now();
    let next = 0;
    const put = async (): Promise<void> => {
      while (next < KEYS) {
        const i = next++;
        await s3.client.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: `images/app-${String(i).padStart(5, '0')}.tar`,
            Body: `image ${i}`,
          }),
        );
      }
    };
    await Promise.all(Array.from({ length: 16 }, put));
    notes.push(
      `bucket: ${KEYS} keys under images/ in s3rver, uploaded in ${((performance.now() - t0) / 1000).toFixed(1)} s.`,
    );

    let pages = 0;
    const listRound = async (): Promise<{ ms: number; stdout: string }> => {
      const start = performance.now();
      let token: string | undefined;
      let keys = 0;
      pages = 0;
      do {
        const out = await s3.client.send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: 'images/', ContinuationToken: token }),
        );
        pages++;
        keys += out.KeyCount ?? 0;
        token = out.NextContinuationToken;
      } while (token !== undefined);
      return { ms: performance.now() - start, stdout: String(keys) };
    };
    const list = await repeat(listRound, (k) => expectEqual('listed keys', Number(k), KEYS));
    const headRound = async (): Promise<{ ms: number; stdout: string }> => {
      const start = performance.now();
      let n = 0;
      let i = 0;
      const head = async (): Promise<void> => {
        while (i < KEYS) {
          const k = i++;
          await s3.client.send(
            new HeadObjectCommand({
              Bucket: bucket,
              Key: `images/app-${String(k).padStart(5, '0')}.tar`,
            }),
          );
          n++;
        }
      };
      await Promise.all(Array.from({ length: 16 }, head));
      return { ms: performance.now() - start, stdout: String(n) };
    };
    // One recorded HEAD round (10,000 requests each): enough for a ratio this large.
    const heads: number[] = [];
    for (let r = 0; r < 2; r++) {
      const h = await headRound();
      expectEqual('heads', Number(h.stdout), KEYS);
      if (r > 0) heads.push(h.ms);
    }
    rows.push(
      row({
        section: 'sync round (s3rver)',
        scenario: `ListObjectsV2, ${pages} pages`,
        hosts: null,
        messages: KEYS,
        runsMs: list,
        alternative: {
          label: `HeadObject per key (${KEYS} requests, 16 at a time)`,
          runsMs: heads,
        },
      }),
    );
    notes.push(
      `sync round: ${pages} ListObjectsV2 requests for ${KEYS} keys (1,000 keys a page); in AWS that is ${pages} × $0.005/1000 = $${((pages * 0.005) / 1000).toFixed(5)} per host per round, ${((pages * 6 * 24 * 30 * 0.005) / 1000).toFixed(2)} USD per host per 30 days at the default 600 s interval. The agent's own sync (fleet-agent) was not on main when this ran: this is the listing it does, measured with the same S3 client settings.`,
    );
  } finally {
    await s3.stop();
  }
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const rows: BenchRow[] = [];
  const notes: string[] = [];
  const start = machine();
  await fleetView(rows, notes);
  await bucketListing(rows, notes);
  const end = machine();
  notes.unshift(
    `Machine: ${String(start.cpus)} × ${String(start.cpuModel)}, ${String(start.memoryGiB)} GiB, node ${process.version}; 1-minute load average ${String(start.loadAverage1m)} at start, ${String(end.loadAverage1m)} at the end (other helpers share the 2 cores: noise).`,
    `Medians of ${RUNS} runs after one unrecorded warm-up; whole processes, start to exit, for the CLI rows. Emulators on 127.0.0.1 answer in about a millisecond; real DynamoDB and S3 add a network round trip per request, so request counts matter more there than here.`,
  );
  process.stdout.write(formatTable(rows) + '\n\n' + notes.map((n) => `* ${n}`).join('\n') + '\n');
  const file = join(repoRoot, 'bench', 'fleet-results.json');
  await writeResults(file, rows, notes);
  process.stdout.write(`\nresults: ${file}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
