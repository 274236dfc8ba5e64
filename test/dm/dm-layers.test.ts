/**
 * Layer chains on a real thin pool: each layer above a base is a create_snap
 * of the layer below, mounted without mkfs. A second image on the same base
 * applies only its top layer and costs the pool about that layer; remove
 * keeps shared layers; gc releases what no image uses; kill -9 between
 * layers and mid-layer (also inside a clone's pool transaction) resumes
 * without reapplying committed layers; an image that needs more room than
 * its held base was made with lands on a clone activated longer, its ext4
 * grown. After each test the pool's thin ids equal the store's. Images are
 * OCI archives made by hand (no umoci in the guest's time budget:
 * helpers/oci-archive.ts ociArchiveOfLayers) of plain-tar layers.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { StateStore } from '../../host-agent/src/store/index.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { packTar } from '../helpers/tar-fixtures.js';
import {
  assertPoolMatchesStore,
  cliJson as json,
  devmapperEnv,
  freshStateDir,
  poolNameOf,
  poolThinIds,
  releaseDmStateDir,
  type ProcessJson,
} from './dm-host.js';

const bucket = 'thinrelay-dm-layers';
const MiB = 1024 ** 2;

const layer = (files: Record<string, Buffer | string>): Promise<Buffer> =>
  packTar(
    Object.entries(files).map(([name, content]) => ({
      name,
      mode: 0o644,
      content,
    })),
  );

/** Bytes of pool data in use (dmsetup status: used data blocks × block size). */
function poolUsedBytes(pool: string): number {
  const status = runSync('dmsetup', ['status', pool]).trim().split(/\s+/);
  const table = runSync('dmsetup', ['table', pool]).trim().split(/\s+/);
  const used = Number(status[5]!.split('/')[0]);
  return used * Number(table[5]) * 512;
}

function runSync(file: string, args: string[]): string {
  return execFileSync(file, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
}

describe('layer chains on a thin pool', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);
  let base: Buffer;

  /** Layers applied by an image's (latest) job, from its unpack step. */
  const appliedBy = (key: string): number => {
    const store = StateStore.open(stateDir, { readonly: true });
    try {
      const image = store.images.latestByKey(key)!;
      const job = store.jobs.latestForImage(image.id)!;
      const unpack = store.jobs.steps(job.id).find((s) => s.name === 'unpack')!;
      return (JSON.parse(unpack.detail ?? '{}') as { layersApplied: number }).layersApplied;
    } finally {
      store.close();
    }
  };

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    // A base of 24 MiB in one layer (random: it must really take blocks), then small tops.
    base = await layer({
      'os-release': 'ID=layers\n',
      'base.bin': Buffer.from(
        Array.from({ length: 24 }, (_, i) => createHash('sha512').update(`b${i}`).digest())
          .map((h) => Buffer.alloc(MiB, h))
          .reduce((a, b) => Buffer.concat([a, b])),
      ),
    });
    const top = (n: string): Promise<Buffer> => layer({ [`app-${n}.txt`]: `app ${n}\n` });
    await s3.putObject(bucket, 'images/base.tar', await ociArchiveOfLayers([base]));
    await s3.putObject(bucket, 'images/app.tar', await ociArchiveOfLayers([base, await top('a')]));
    for (const n of ['c2', 'c3', 'c4']) {
      const mid = await layer({ [`mid-${n}.bin`]: Buffer.alloc(4 * MiB, n) });
      await s3.putObject(
        bucket,
        `images/crash-${n}.tar`,
        await ociArchiveOfLayers([base, mid, await top(n)]),
      );
    }
    await s3.putObject(
      bucket,
      'images/grown.tar',
      await ociArchiveOfLayers([base, await layer({ 'app-gr.txt': 'app gr\n' })]),
    );
    stateDir = freshStateDir('thinrelay-dm-layers-');
    env = { ...s3EnvFor(s3), ...devmapperEnv(stateDir), THINRELAY_BUCKET: bucket };
    const created = await cli('pool', 'create', '--size', '2G');
    assert.equal(created.code, 0, created.stderr);
  });
  after(async () => {
    releaseDmStateDir(stateDir);
    await s3.stop();
  });

  test('a second image on the same base applies one layer: a create_snap of the base, about its size in the pool', async (t) => {
    const pool = poolNameOf(stateDir);
    const used0 = poolUsedBytes(pool);
    json<ProcessJson>(await cli('process-image', '--s3-key', 'images/base.tar', '--json'));
    const used1 = poolUsedBytes(pool);
    const app = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/app.tar', '--json'),
    );
    const used2 = poolUsedBytes(pool);
    t.diagnostic(`pool growth: base image ${used1 - used0} bytes, app image ${used2 - used1}`);
    assert.equal(appliedBy('images/base.tar'), 1);
    assert.equal(appliedBy('images/app.tar'), 1, 'only the top layer');
    assert.ok(used1 - used0 > 24 * MiB);
    assert.ok(used2 - used1 < 0.25 * (used1 - used0), `app grew the pool by ${used2 - used1}`);
    withMounted(app.devicePath, (root) => {
      assert.equal(readFileSync(join(root, 'os-release'), 'utf8'), 'ID=layers\n');
      assert.equal(readFileSync(join(root, 'app-a.txt'), 'utf8'), 'app a\n');
    });
    assertPoolMatchesStore(stateDir);
  });

  // Inside a clone's pool transaction, mid-layer, between layers (the loop sweep has the rest).
  const crashes: { point: string; key: string; applyAfter: number }[] = [
    { point: 'dm:create_snap:sent', key: 'images/crash-c2.tar', applyAfter: 2 },
    { point: 'layer:2:midway', key: 'images/crash-c3.tar', applyAfter: 2 },
    { point: 'layer:2:ready', key: 'images/crash-c4.tar', applyAfter: 1 },
  ];
  for (const c of crashes) {
    test(`kill -9 at ${c.point} (base layer held), then resume`, async () => {
      const crashed = await runCli(['process-image', '--s3-key', c.key], {
        ...env,
        THINRELAY_CRASH_AT: c.point,
      });
      assert.equal(crashed.signal, 'SIGKILL', `expected to die at ${c.point}: ${crashed.stderr}`);
      const resumed = json<ProcessJson>(await cli('process-image', '--s3-key', c.key, '--json'));
      assert.equal(appliedBy(c.key), c.applyAfter, 'committed layers are not applied again');
      assertPoolMatchesStore(stateDir);
      withMounted(resumed.devicePath, (root) =>
        assert.match(readFileSync(join(root, `app-${c.key.slice(13, 15)}.txt`), 'utf8'), /app/),
      );
    });
  }

  test('an image that needs more room than its held base: the clone is activated longer and its ext4 grown', async () => {
    // The base was made 1 GiB (the default for its size); this image asks for 1.5 GiB.
    const grown = json<ProcessJson>(
      await runCli(['process-image', '--s3-key', 'images/grown.tar', '--json'], {
        ...env,
        THINRELAY_VOLUME_SIZE: '1536M',
      }),
    );
    assert.equal(appliedBy('images/grown.tar'), 1, 'only the new layer');
    const store = StateStore.open(stateDir, { readonly: true });
    let sizes: number[];
    try {
      const image = store.images.latestByKey('images/grown.tar')!;
      sizes = store.images.layers(image.id).map((l) => l.volume_size_bytes!);
    } finally {
      store.close();
    }
    assert.deepEqual(sizes, [1024 * MiB, 1536 * MiB], 'the held base as it was, the clone larger');
    const length = Number(runSync('blockdev', ['--getsize64', grown.devicePath]).trim());
    assert.equal(length, 1536 * MiB, "the image's thin snapshot has the grown length");
    withMounted(grown.devicePath, (root) => {
      const fs = statfsSync(root);
      assert.ok(fs.blocks * fs.bsize > 1280 * MiB, `its ext4 holds ${fs.blocks * fs.bsize} bytes`);
      assert.equal(readFileSync(join(root, 'os-release'), 'utf8'), 'ID=layers\n');
      assert.equal(readFileSync(join(root, 'app-gr.txt'), 'utf8'), 'app gr\n');
    });
    assertPoolMatchesStore(stateDir);
  });

  test('remove keeps the shared base; once no image uses a layer, its thin device goes', async () => {
    const pool = poolNameOf(stateDir);
    const before = poolThinIds(pool).length;
    json(await cli('remove', 'images/base.tar', '--force', '--json'));
    // Only the base image's snapshot went: its one layer is shared.
    assert.equal(poolThinIds(pool).length, before - 1);
    for (const key of [
      'images/app.tar',
      'images/crash-c2.tar',
      'images/crash-c3.tar',
      'images/crash-c4.tar',
      'images/grown.tar',
    ])
      json(await cli('remove', key, '--force', '--json'));
    json(await cli('gc', '--json'));
    assert.deepEqual(poolThinIds(pool), [], 'every thin device released');
    assertPoolMatchesStore(stateDir);
  });
});
