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
 * - A new host catching up with 20 images already in the bucket (its first
 *   sync round, `thinrelay agent --group`), against the same 20 images
 *   reaching a running host as events (the local stack: s3rver → fan-out
 *   handler → SQS), loop backend, as root.
 *
 * Not part of npm test: figures, not assertions (each measurement checks its
 * answer: the counts, the number of hosts, the number of keys).
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalStack } from '../../host-agent/src/demo/local-stack.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { packTar } from '../helpers/tar-fixtures.js';
import { FleetReader } from '../../host-agent/src/fleet/view/fleet-reader.js';
import { imageStatus } from '../../host-agent/src/fleet/view/fleet-view.js';
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

const CATCH_UP_IMAGES = 20;
const CATCH_UP_RUNS = Number(process.env.THINRELAY_BENCH_CATCHUP_REPS ?? '3');

/** A small image (a directory and a few files), distinct per key and run. */
const smallImage = (marker: string): Promise<Buffer> =>
  packTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hostname', content: `${marker}\n` },
    { name: 'bin/tool', content: Buffer.alloc(64 * 1024, marker.length), mode: 0o755 },
  ]);

/** One host against a fresh local stack; `scenario` times what it measures. */
async function withHost(
  scenario: (ctx: {
    upload: (run: string) => Promise<void>;
    start: () => AgentProcess;
  }) => Promise<number>,
): Promise<number> {
  const bucket = `bench-catchup-${Date.now()}`;
  const stack = await startLocalStack({ bucket, maxReceiveCount: 5 });
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-bench-catchup-'));
  const env = {
    ...stack.env,
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_RESERVE_BYTES: '0',
    THINRELAY_VOLUME_SIZE: '16M',
    THINRELAY_WAIT_SECONDS: '1',
    THINRELAY_CONCURRENCY: '2',
    THINRELAY_LOG_LEVEL: 'info',
  };
  let agent: AgentProcess | undefined;
  try {
    return await scenario({
      upload: async (run) => {
        for (let i = 0; i < CATCH_UP_IMAGES; i++)
          await stack.s3.send(
            new PutObjectCommand({
              Bucket: bucket,
              Key: `images/img-${i}.tar`,
              Body: await smallImage(`${run}-${i}`),
            }),
          );
      },
      start: () => {
        agent = startAgent(
          ['--group', 'default', '--host-id', 'bench-host', '--metrics-addr', 'off'],
          env,
        );
        return agent;
      },
    });
  } finally {
    await agent?.stop();
    await runCli(['pool', 'destroy', '--force'], env);
    releaseStateDir(stateDir);
    await stack.stop();
  }
}

async function catchUp(rows: BenchRow[], notes: string[]): Promise<void> {
  if (process.getuid?.() !== 0) {
    notes.push('catch-up vs events: not measured (needs root for loop devices); run as root.');
    return;
  }
  let listRequests = 0;
  const sync: number[] = [];
  const events: number[] = [];
  for (let r = 0; r < CATCH_UP_RUNS; r++) {
    // A new host: the images are in the bucket before it starts.
    sync.push(
      await withHost(async ({ upload, start }) => {
        await upload(`sync${r}`);
        const t0 = performance.now();
        const agent = start();
        const round = await agent.waitForLog((l) => l.msg === 'sync round done', 300_000);
        expectEqual('images caught up', round.processed, CATCH_UP_IMAGES);
        listRequests = Number(round.listRequests);
        return performance.now() - t0;
      }),
    );
    // A running host: the same number of images arrive as events.
    events.push(
      await withHost(async ({ upload, start }) => {
        const agent = start();
        await agent.waitForLog((l) => l.msg === 'sync round done', 120_000);
        // The fan-out's queue discovery (1 s TTL here) must see the new queue.
        await new Promise((res) => setTimeout(res, 1500));
        const t0 = performance.now();
        await upload(`events${r}`);
        const deadline = Date.now() + 300_000;
        while (agent.outcomes().filter((o) => o.outcome === 'applied').length < CATCH_UP_IMAGES) {
          if (Date.now() > deadline) throw new Error('events: not every image was applied');
          await new Promise((res) => setTimeout(res, 100));
        }
        return performance.now() - t0;
      }),
    );
  }
  rows.push(
    row({
      section: 'catch-up (agent, loop)',
      scenario: `new host, ${CATCH_UP_IMAGES} images in the bucket: start → all ready (1 sync round)`,
      hosts: 1,
      messages: CATCH_UP_IMAGES,
      runsMs: sync,
      alternative: {
        label: `the same images as events to a running host (upload → all applied)`,
        runsMs: events,
      },
    }),
  );
  notes.push(
    `catch-up: the new host's first sync round listed the bucket in ${listRequests} ListObjectsV2 request(s) and processed ${CATCH_UP_IMAGES} images (64 KiB each, 16 MiB volumes, concurrency 2); its time includes the agent's start and registration (queues, host item). The events row starts at the first upload and includes the 20 uploads, the fan-out and the 1 s SQS polls of the local stack. Medians of ${CATCH_UP_RUNS} runs, each on a fresh stack and state dir.`,
  );
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const rows: BenchRow[] = [];
  const notes: string[] = [];
  const start = machine();
  // THINRELAY_BENCH_ONLY=view|sync|catchup runs one section (THINRELAY_BENCH_OUT: where to write).
  const only = process.env.THINRELAY_BENCH_ONLY;
  if (only === undefined || only === 'view') await fleetView(rows, notes);
  if (only === undefined || only === 'sync') await bucketListing(rows, notes);
  if (only === undefined || only === 'catchup') await catchUp(rows, notes);
  const end = machine();
  notes.unshift(
    `Machine: ${String(start.cpus)} × ${String(start.cpuModel)}, ${String(start.memoryGiB)} GiB, node ${process.version}; 1-minute load average ${String(start.loadAverage1m)} at start, ${String(end.loadAverage1m)} at the end (other helpers share the 2 cores: noise).`,
    `Medians of ${RUNS} runs after one unrecorded warm-up; whole processes, start to exit, for the CLI rows. Emulators on 127.0.0.1 answer in about a millisecond; real DynamoDB and S3 add a network round trip per request, so request counts matter more there than here.`,
  );
  process.stdout.write(formatTable(rows) + '\n\n' + notes.map((n) => `* ${n}`).join('\n') + '\n');
  const file = process.env.THINRELAY_BENCH_OUT ?? join(repoRoot, 'bench', 'fleet-results.json');
  await writeResults(file, rows, notes);
  process.stdout.write(`\nresults: ${file}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
