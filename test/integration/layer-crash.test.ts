/**
 * kill -9 at the layer boundaries and in the middle of a layer, on loop
 * devices, then run again: the image completes once, layers committed
 * before the crash are not applied again (an interrupted layer's volume is
 * discarded and the layer applied afresh), and the store's objects equal
 * what the host holds — no pool file, loop device or mount unaccounted for.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli } from '../helpers/cli.js';
import { assertHostMatchesStore, releaseStateDir } from '../helpers/host-leaks.js';
import { withMounted } from '../helpers/mount-probe.js';
import { appendLayer, buildOciFixture, tarOf, type OciFixture } from '../helpers/oci-fixtures.js';
import { needsRootAndTools, ociArchiveOfTag } from '../helpers/oci-archive.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const bucket = 'thinrelay-layer-crash';
const needsTools = needsRootAndTools(['umoci', 'skopeo', 'zstd']);

/**
 * Where to die, whether the host already holds the three base layers (image
 * `held`), and how many layers the run after the crash must still apply.
 * The image processed has five layers: the fixture's three, then two new.
 */
const cases: { point: string; held: boolean | 'small'; applyAfter: number }[] = [
  { point: 'layer:clone-intent', held: true, applyAfter: 2 },
  { point: 'layer:cloned', held: true, applyAfter: 2 },
  { point: 'layer:4:mounted', held: true, applyAfter: 2 },
  { point: 'layer:4:midway', held: true, applyAfter: 2 },
  { point: 'layer:4:flushed', held: true, applyAfter: 1 },
  { point: 'seal:detached', held: true, applyAfter: 1 },
  { point: 'layer:4:ready', held: true, applyAfter: 1 },
  { point: 'layer:5:midway', held: true, applyAfter: 1 },
  { point: 'layer:5:ready', held: true, applyAfter: 0 },
  { point: 'layer:1:midway', held: false, applyAfter: 5 },
  { point: 'layer:2:ready', held: false, applyAfter: 3 },
  // Held on 12 MiB volumes, too small for layers 4 and 5: layer 4's clone is grown first.
  { point: 'layer:grow:checked', held: 'small', applyAfter: 2 },
  { point: 'layer:cloned', held: 'small', applyAfter: 2 },
  { point: 'layer:4:mounted', held: 'small', applyAfter: 2 },
];

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe('kill -9 between layers and mid-layer, then resume', { skip: needsTools }, () => {
  let s3: S3Emulator;
  let work: string;
  let fx: OciFixture;
  const stateDirs: string[] = [];

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    work = mkdtempSync(join(tmpdir(), 'thinrelay-layer-crash-'));
    fx = await buildOciFixture(work);
    let from = fx.tag;
    for (const n of [4, 5]) {
      const stage = mkdtempSync(join(work, 'stage-'));
      // Big enough that a layer's progress reaches its midway point more than once.
      writeFileSync(join(stage, `layer${n}.bin`), Buffer.alloc(8 * 1024 ** 2, n));
      writeFileSync(join(stage, `layer${n}.txt`), `layer ${n}\n`);
      const layer = await tarOf(stage, [`layer${n}.bin`, `layer${n}.txt`]);
      appendLayer(
        fx.layout,
        from,
        `l${n}`,
        layer,
        'application/vnd.oci.image.layer.v1.tar',
        sha256(layer),
      );
      from = `l${n}`;
    }
    await s3.putObject(bucket, 'images/held.tar', ociArchiveOfTag(fx.layout, fx.tag, work));
    await s3.putObject(bucket, 'images/app.tar', ociArchiveOfTag(fx.layout, 'l5', work));
  });
  after(async () => {
    for (const d of stateDirs) releaseStateDir(d);
    await s3.stop();
    execFileSync('rm', ['-rf', work]);
  });

  for (const c of cases) {
    const held =
      c.held === 'small'
        ? ' (base layers held on small volumes)'
        : c.held
          ? ' (base layers held)'
          : '';
    test(`crash at ${c.point}${held}`, async () => {
      const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-lcrash-'));
      stateDirs.push(stateDir);
      const env = {
        ...s3EnvFor(s3),
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BUCKET: bucket,
        THINRELAY_RESERVE_BYTES: '0',
      };
      if (c.held !== false) {
        const r = await runCli(
          ['process-image', '--s3-key', 'images/held.tar'],
          c.held === 'small' ? { ...env, THINRELAY_VOLUME_SIZE: '12M' } : env,
        );
        assert.equal(r.code, 0, r.stderr);
      }
      const crashed = await runCli(['process-image', '--s3-key', 'images/app.tar'], {
        ...env,
        THINRELAY_CRASH_AT: c.point,
      });
      assert.equal(
        crashed.signal,
        'SIGKILL',
        `expected to die at ${c.point}; exit ${crashed.code}: ${crashed.stderr}`,
      );

      const resumed = await runCli(['process-image', '--s3-key', 'images/app.tar', '--json'], env);
      assert.equal(resumed.code, 0, resumed.stderr);
      const out = JSON.parse(resumed.stdout) as { devicePath: string };

      const store = StateStore.open(stateDir, { readonly: true });
      try {
        const image = store.images.latestByKey('images/app.tar')!;
        assert.equal(image.status, 'ready');
        const jobs = store.db.prepare('SELECT * FROM jobs WHERE image_id = ?').all(image.id) as {
          id: number;
          status: string;
        }[];
        assert.deepEqual(
          jobs.map((j) => j.status),
          ['complete'],
          'one job, completed by the takeover',
        );
        const unpack = store.jobs.steps(jobs[0]!.id).find((s) => s.name === 'unpack')!;
        const detail = JSON.parse(unpack.detail ?? '{}') as { layersApplied?: number };
        assert.equal(
          detail.layersApplied ?? 0,
          c.applyAfter,
          `layers applied after the crash (committed ones are not redone): ${unpack.detail}`,
        );
        const layers = store.images.layers(image.id);
        assert.equal(layers.length, 5);
        assert.ok(layers.every((l) => l.status === 'ready'));
        const volumes = store.objects.listLive().filter((o) => o.kind === 'volume');
        assert.equal(volumes.length, 5, 'one volume per layer, none left over');
        assert.ok(volumes.every((v) => v.state === 'sealed'));
        if (c.held === 'small') {
          const sizes = layers.map((l) => store.objects.get(l.volume_id!)!.size_bytes);
          assert.deepEqual(
            sizes.slice(0, 3),
            [12, 12, 12].map((m) => m * 1024 ** 2),
          );
          assert.ok(sizes[3]! > 12 * 1024 ** 2, `layer 4's clone grew: ${sizes[3]} bytes`);
          assert.equal(sizes[4], sizes[3], 'layer 5 keeps the grown size');
        }
        const chains = store.db
          .prepare(`SELECT chain_id FROM blobs WHERE status = 'ready'`)
          .pluck()
          .all() as string[];
        assert.equal(new Set(chains).size, chains.length, 'one ready layer per chain ID');
      } finally {
        store.close();
      }
      assertHostMatchesStore(stateDir);
      withMounted(out.devicePath, (root) => {
        assert.equal(readFileSync(join(root, 'layer4.txt'), 'utf8'), 'layer 4\n');
        assert.equal(readFileSync(join(root, 'layer5.txt'), 'utf8'), 'layer 5\n');
        assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'hi\n');
      });
    });
  }
});
