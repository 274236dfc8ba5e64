/**
 * Catch-up sync of a 10,000-key bucket against s3rver (127.0.0.1): requests
 * and time per round, for a host that holds nothing yet (the round lists and
 * plans 10,000 images to process; the processing itself is not timed here)
 * and for a host that holds every key (a steady-state round: list, compare,
 * nothing to do), side by side with what an operator would otherwise run to
 * see the same listing (`aws s3 ls --recursive`, AWS CLI), as a ratio.
 *
 * Run: npm run build && node --openssl-legacy-provider dist/test/bench/sync-bench.js [keys]
 * (s3rver 3.7 makes ListObjectsV2 continuation tokens with DES, which
 * OpenSSL 3 only offers through the legacy provider: without it every
 * listing of more than 1,000 keys fails with InternalError.)
 * Figures, not assertions (but every round must see every key).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../../host-agent/src/config.js';
import { KeyLock } from '../../host-agent/src/daemon/key-lock.js';
import {
  listGroupKeys,
  planSync,
  runSyncRound,
} from '../../host-agent/src/fleet/member/catch-up-sync.js';
import { FleetMetrics } from '../../host-agent/src/fleet/member/fleet-metrics.js';
import type { ImageReporter } from '../../host-agent/src/fleet/member/image-reporter.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { openRuntime } from '../../host-agent/src/runtime.js';
import { deploymentItem } from '../helpers/fleet-deployment.js';
import { S3RVER_ACCESS_KEY, S3RVER_SECRET_KEY, startS3Emulator } from '../helpers/s3-emulator.js';

const keys = Number(process.argv[2] ?? 10_000);
const bucket = 'sync-bench';

const s3 = await startS3Emulator();
const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-sync-bench-'));
try {
  await s3.createBucket(bucket);
  const uploadStart = performance.now();
  let next = 0;
  const eTags = new Map<string, string>();
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < keys) {
        const key = `images/app-${String(next++).padStart(5, '0')}.tar`;
        eTags.set(key, (await s3.putObject(bucket, key, key)).eTag);
      }
    }),
  );
  const uploadSeconds = (performance.now() - uploadStart) / 1000;
  const deployment = deploymentItem({ bucket });
  const rt = openRuntime({
    config: loadConfig({ stateDir }, {}),
    logger: silentLogger,
    s3: () => Promise.resolve(s3.client),
  });

  // A new host: list + plan (what the round decides before any image work).
  const t0 = performance.now();
  const listing = await listGroupKeys(s3.client, deployment, 'default');
  const plan = planSync(rt.store, deployment, listing);
  const newHostMs = performance.now() - t0;
  if (plan.process.length !== keys) throw new Error(`planned ${plan.process.length} of ${keys}`);

  // A host that holds every key at its ETag: a whole round, nothing to do.
  rt.store.tx(() => {
    for (const [key, eTag] of eTags) {
      const row = rt.store.images.upsert({ bucket, key, versionId: null, eTag, size: 10 });
      rt.store.images.setStatus(row.id, 'ready');
    }
  });
  const metrics = new FleetMetrics();
  const ctx = {
    deps: rt,
    keyLock: new KeyLock(),
    reporter: {} as ImageReporter,
    metrics,
    logger: silentLogger,
    concurrency: 2,
    signal: new AbortController().signal,
    stopping: () => false,
  };
  const rounds = [];
  for (let i = 0; i < 3; i++) rounds.push(await runSyncRound(ctx, deployment, 'default'));
  for (const r of rounds)
    if (r.upToDate !== keys || r.processed + r.retired !== 0) throw new Error('round not steady');

  // The operator's alternative for the same listing.
  const awsStart = performance.now();
  // Asynchronously: s3rver runs in this process's event loop.
  const { stdout: awsOut } = await promisify(execFile)(
    'aws',
    ['--endpoint-url', s3.endpoint, 's3', 'ls', `s3://${bucket}/images/`, '--recursive'],
    {
      env: {
        ...process.env,
        AWS_ACCESS_KEY_ID: S3RVER_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY: S3RVER_SECRET_KEY,
        AWS_DEFAULT_REGION: 'us-east-1',
      },
      maxBuffer: 64 * 1024 * 1024,
    },
  );
  const awsMs = performance.now() - awsStart;
  const awsLines = awsOut.split('\n').filter((l) => l !== '').length;
  if (awsLines !== keys) throw new Error(`aws s3 ls listed ${awsLines}`);

  const steadyMs = rounds.map((r) => r.durationMs).sort((a, b) => a - b)[1]!;
  const result = {
    machine: { cores: cpus().length, loadavg: loadavg().map((l) => Number(l.toFixed(2))) },
    keys,
    uploadSeconds: Number(uploadSeconds.toFixed(1)),
    newHost: {
      listRequests: listing.requests,
      listAndPlanMs: Math.round(newHostMs),
      toProcess: plan.process.length,
    },
    steadyRound: {
      requests: rounds[1]!.requests,
      medianMs: steadyMs,
      roundsMs: rounds.map((r) => r.durationMs),
    },
    awsS3LsRecursiveMs: Math.round(awsMs),
    ratioAwsLsToSteadyRound: Number((awsMs / steadyMs).toFixed(2)),
  };
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  rt.close();
} finally {
  await s3.stop();
  rmSync(stateDir, { recursive: true, force: true });
}
