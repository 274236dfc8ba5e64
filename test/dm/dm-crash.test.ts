/**
 * kill -9 on the devmapper backend at every fail point of the pipeline (each
 * step boundary, each storage intent, mid-unpack), at every point of a pool
 * transaction (after the intent, after the message, after the commit
 * marker), while a metadata snapshot is held, and in the middle of deletes.
 * Then restart: after reconcile the pool's thin id list equals the store's
 * exactly, no dm device is active that the store does not list, and the
 * image completes exactly once. Each crash's reconcile actions are written
 * to dm-crash-outcomes.json next to this file's output, for the report.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import {
  dmDeleteFailpointNames,
  dmFailpointNames,
  failpointNames,
} from '../../host-agent/src/failpoints.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import {
  assertPoolMatchesStore,
  devmapperEnv,
  freshStateDir,
  releaseDmStateDir,
} from './dm-host.js';
import { inParts, partsOf } from './suite-parts.js';

const bucket = 'thinrelay-dm-crash';

/**
 * Every point by default (15-35 s each under User-Mode Linux on a loaded host,
 * `npm run test:dm`, which CI runs, split over both guests by run.sh). Under qemu TCG a point costs two or three CLI runs
 * of 10-20 s each, so `npm run test:dm:qemu` sets THINRELAY_DM_CRASH_POINTS=ci:
 * one point per kind of pool recovery — change rolled back, change committed,
 * volume mid-unpack, delete finished. THINRELAY_DM_CRASH_POINTS=a,b,c runs those.
 */
const ciPoints = [
  'dm:create_thin:sent',
  'dm:create_snap:committed',
  'unpack:midway',
  'dm:delete:sent',
];
const requested = process.env.THINRELAY_DM_CRASH_POINTS ?? 'all';
const only =
  requested === 'all'
    ? undefined
    : requested === 'ci'
      ? ciPoints
      : requested.split(',').filter((p) => p !== '');
const allPoints: string[] = [
  ...failpointNames,
  ...dmFailpointNames,
  'dm:metadata_snap:reserved',
  ...dmDeleteFailpointNames,
];
/**
 * run.sh may split the sweep over its two guests (THINRELAY_DM_PARTS, suite-parts.ts):
 * a point's unit number is its position in the whole list.
 */
const parts = partsOf(basename(import.meta.filename));
const selected = (point: string): boolean =>
  (only === undefined || only.includes(point)) && inParts(parts, allPoints.indexOf(point));
const outcomesFile =
  parts === null
    ? 'dm-crash-outcomes.json'
    : `dm-crash-outcomes-${parts.parts.join('+')}of${parts.of}.json`;

/** The reconcile log lines of a run: what recovery did. */
function reconcileActions(r: CliResult): string[] {
  const out: string[] = [];
  for (const line of r.stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    const rec = JSON.parse(line) as {
      msg?: string;
      object?: string;
      action?: string;
      reason?: string;
    };
    if (rec.msg === 'reconcile' && rec.action !== 'adopted')
      out.push(`${rec.object}: ${rec.action} (${rec.reason})`);
  }
  return out;
}

describe('kill -9 on devmapper, then restart', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const outcomes: Record<string, string[]> = {};
  let n = 0;

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    stateDir = freshStateDir('thinrelay-dm-crash-');
    env = { ...s3EnvFor(s3), ...devmapperEnv(stateDir), THINRELAY_BUCKET: bucket };
    const created = await runCli(['pool', 'create', '--size', '4G'], env);
    assert.equal(created.code, 0, created.stderr);
  });
  after(async () => {
    writeFileSync(
      join(import.meta.dirname, outcomesFile),
      JSON.stringify(outcomes, null, 2) + '\n',
    );
    releaseDmStateDir(stateDir);
    await s3.stop();
  });

  async function freshImage(): Promise<string> {
    const key = `images/crash-${++n}.tar`;
    // A 256 KiB payload (was 2 MiB): every point dies at the same step as before —
    // progress is reported every 4 MiB and at the end of the source, so unpack:midway
    // fires at that last report with either size — and the guest no longer spends
    // seconds per point hashing out the payload.
    await s3.putObject(
      bucket,
      key,
      await buildSampleRootfs({ payloadBytes: 256 * 1024, seed: `crash-${n}` }),
    );
    return key;
  }

  const points = allPoints
    .filter((p) => !(dmDeleteFailpointNames as readonly string[]).includes(p))
    .filter(selected);
  for (const point of points) {
    test(`crash at ${point}`, async () => {
      const key = await freshImage();
      const crashed = await runCli(['process-image', '--s3-key', key], {
        ...env,
        THINRELAY_CRASH_AT: point,
      });
      assert.equal(crashed.signal, 'SIGKILL', `expected to die at ${point}: ${crashed.stderr}`);

      const resumed = await runCli(['process-image', '--s3-key', key, '--json'], env);
      assert.equal(resumed.code, 0, resumed.stderr);
      outcomes[point] = reconcileActions(resumed);
      const out = JSON.parse(resumed.stdout) as { devicePath: string; imageId: number };

      const store = StateStore.open(stateDir, { readonly: true });
      try {
        const jobs = store.db
          .prepare('SELECT status FROM jobs WHERE image_id = ?')
          .all(out.imageId) as { status: string }[];
        assert.deepEqual(
          jobs.map((j) => j.status),
          ['complete'],
          'one job, completed by the takeover',
        );
      } finally {
        store.close();
      }
      assertPoolMatchesStore(stateDir);
      // The image's own content, not some other image's.
      withMounted(out.devicePath, (root) =>
        assert.match(
          readFileSync(join(root, 'etc/os-release'), 'utf8'),
          new RegExp(`VERSION_ID="crash-${n}"`),
        ),
      );
    });
  }

  for (const point of dmDeleteFailpointNames.filter(selected)) {
    test(`crash at ${point} while removing an image, then gc`, async () => {
      const key = await freshImage();
      const done = await runCli(['process-image', '--s3-key', key, '--json'], env);
      assert.equal(done.code, 0, done.stderr);
      const { imageId } = JSON.parse(done.stdout) as { imageId: number };
      const crashed = await runCli(['remove', String(imageId), '--force'], {
        ...env,
        THINRELAY_CRASH_AT: point,
      });
      assert.equal(crashed.signal, 'SIGKILL', `expected to die at ${point}: ${crashed.stderr}`);
      const gc = await runCli(['gc', '--json'], env);
      assert.equal(gc.code, 0, gc.stderr);
      outcomes[point] = reconcileActions(gc);
      assertPoolMatchesStore(stateDir);
      // The interrupted removal can be finished.
      const removed = await runCli(['remove', String(imageId), '--force'], env);
      assert.equal(removed.code, 0, removed.stderr);
      assertPoolMatchesStore(stateDir);
    });
  }
});
