/**
 * kill -9 at every fail point of the pipeline (every step boundary, every
 * storage intent, and the middle of the unpack), then run again: the image
 * completes exactly once, completed steps are not redone, and nothing is
 * left attached, mounted or on disk that the database does not account for.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { failpointNames } from '../../host-agent/src/failpoints.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli } from '../helpers/cli.js';
import { assertHostMatchesStore, hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const bucket = 'thinrelay-crash';
const key = 'images/crash.tar';

describe('kill -9 at every fail point, then resume', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  const stateDirs: string[] = [];

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    await s3.putObject(
      bucket,
      key,
      await buildSampleRootfs({ payloadBytes: 24 * 1024 ** 2, seed: 'crash' }),
    );
  });
  after(async () => {
    for (const d of stateDirs) releaseStateDir(d);
    await s3.stop();
  });

  /** A new, empty host: its own state dir (released after the suite) and env for the CLI. */
  function freshHost(prefix: string): { stateDir: string; env: NodeJS.ProcessEnv } {
    const stateDir = mkdtempSync(join(tmpdir(), prefix));
    stateDirs.push(stateDir);
    const env = {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
    };
    return { stateDir, env };
  }

  for (const point of failpointNames) {
    test(`crash at ${point}`, async () => {
      const { stateDir, env } = freshHost('thinrelay-crash-');

      const crashed = await runCli(['process-image', '--s3-key', key], {
        ...env,
        THINRELAY_CRASH_AT: point,
      });
      assert.equal(
        crashed.signal,
        'SIGKILL',
        `expected to die at ${point}; exit ${crashed.code}: ${crashed.stderr}`,
      );
      const stepsAtCrash = (() => {
        const store = StateStore.open(stateDir, { readonly: true });
        try {
          const job = store.jobs.listOpen()[0];
          return job === undefined ? [] : store.jobs.steps(job.id);
        } finally {
          store.close();
        }
      })();

      const resumed = await runCli(['process-image', '--s3-key', key, '--json'], env);
      assert.equal(resumed.code, 0, resumed.stderr);
      const out = JSON.parse(resumed.stdout) as { devicePath: string; imageId: number };

      const store = StateStore.open(stateDir, { readonly: true });
      try {
        const jobs = store.db.prepare('SELECT * FROM jobs').all() as {
          id: number;
          status: string;
        }[];
        assert.deepEqual(
          jobs.map((j) => j.status),
          ['complete'],
          'one job, completed by the takeover',
        );
        const steps = store.jobs.steps(jobs[0]!.id);
        for (const before of stepsAtCrash.filter((s) => s.status === 'complete')) {
          assert.equal(
            steps[before.position]?.attempts,
            1,
            `completed step ${before.name} was not redone`,
          );
        }
        assert.ok(steps.every((s) => s.status === 'complete'));
        const volumes = store.objects.listLive().filter((o) => o.kind === 'volume');
        assert.equal(volumes.length, 1, 'exactly one volume');
        assert.equal(volumes[0]?.state, 'sealed');
        const snaps = store.snapshots.list();
        assert.equal(snaps.length, 1, 'exactly one active snapshot');
        assert.equal(snaps[0]?.device_path, out.devicePath);
      } finally {
        store.close();
      }
      assertHostMatchesStore(stateDir);

      withMounted(out.devicePath, (root) =>
        assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="crash"/),
      );
    });
  }

  test('after a simulated reboot (all loop devices gone), a run brings the snapshot back', async () => {
    const { stateDir, env } = freshHost('thinrelay-reboot-');
    assert.equal((await runCli(['process-image', '--s3-key', key], env)).code, 0);
    for (const l of hostInventory(stateDir).loops) execFileSync('losetup', ['-d', l.device]);
    assert.deepEqual(hostInventory(stateDir).loops, []);
    const again = await runCli(['process-image', '--s3-key', key, '--json'], env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /reactivated/);
    assertHostMatchesStore(stateDir);
    assert.equal(hostInventory(stateDir).loops.length, 1);
  });
});
