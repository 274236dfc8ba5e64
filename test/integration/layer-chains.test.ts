/**
 * Layers as chains of volumes shared between images, end to end with the
 * built CLI on real loop devices, the state dir on an xfs filesystem (so the
 * loop backend's clones are reflink copies, as a thin pool's snapshots
 * share blocks). Images are built with umoci and skopeo: a second image on
 * the same base applies only its top layer and costs the pool about that
 * layer; its result equals `umoci raw unpack`; remove keeps layers another
 * image uses and releases the rest; gc releases what no image uses; a digest
 * mismatch leaves the pool as it was; two jobs needing one new layer build
 * it once; a new layer that outgrows the volumes its held layers were made
 * with is applied on a clone grown to the size the image needs.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmdirSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { StateStore } from '../../host-agent/src/store/index.js';
import { okJson as json, runCli, type CliResult } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { appendLayer, buildOciFixture, tarOf, type OciFixture } from '../helpers/oci-fixtures.js';
import { needsRootAndTools, ociArchiveOfTag } from '../helpers/oci-archive.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { compareTrees } from '../helpers/tree-compare.js';

const bucket = 'thinrelay-layers';
const tar = 'application/vnd.oci.image.layer.v1.tar';
const MiB = 1024 ** 2;
const needsTools = needsRootAndTools(['umoci', 'skopeo', 'zstd', 'mkfs.xfs']);

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

interface Show {
  image: { id: number; status: string };
  steps: { name: string; detail: Record<string, unknown> | null }[];
  layers: {
    position: number;
    chainId: string;
    volume: string;
    volumeSizeBytes: number;
    sharedBy: number;
  }[];
}

describe('layer chains shared between images', { skip: needsTools }, () => {
  let s3: S3Emulator;
  let work: string;
  let xfsMount: string;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  let fx: OciFixture;
  const archiveSizes = new Map<string, number>();
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);

  /** Bytes in use on the xfs filesystem holding the pool (shared extents counted once). */
  const xfsUsed = (): number => {
    execFileSync('sync', ['-f', xfsMount]);
    const s = statfsSync(xfsMount);
    return (s.blocks - s.bfree) * s.bsize;
  };

  /** A new layer holding `files` (name → content) on top of image `from`, tagged `to`. */
  const addLayer = async (
    from: string,
    to: string,
    files: Record<string, Buffer>,
    diffId?: string,
  ): Promise<void> => {
    const stage = mkdtempSync(join(work, 'stage-'));
    for (const [name, body] of Object.entries(files)) writeFileSync(join(stage, name), body);
    const layer = await tarOf(stage, Object.keys(files));
    appendLayer(fx.layout, from, to, layer, tar, diffId ?? sha256(layer));
  };

  /** The activated device's tree equals `umoci raw unpack`'s (the root's own mtime aside). */
  const assertEqualsUmoci = async (devicePath: string, reference: string): Promise<void> => {
    const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
    execFileSync('mount', ['-o', 'ro', devicePath, mnt]);
    try {
      const diffs = await compareTrees(reference, mnt, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      });
      assert.deepEqual(diffs, [], 'the chain equals umoci raw unpack');
    } finally {
      execFileSync('umount', [mnt]);
      rmdirSync(mnt);
    }
  };

  const show = async (key: string): Promise<Show> => json<Show>(await cli('show', key, '--json'));
  const unpackDetail = (s: Show): Record<string, unknown> =>
    s.steps.find((x) => x.name === 'unpack')!.detail!;
  const processImage = async (key: string): Promise<{ devicePath: string }> =>
    json<{ devicePath: string }>(await cli('process-image', '--s3-key', key, '--json'));

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    work = mkdtempSync(join(tmpdir(), 'thinrelay-chains-'));
    xfsMount = join(work, 'xfs');
    mkdirSync(xfsMount);
    const img = join(work, 'xfs.img');
    execFileSync('truncate', ['-s', '3G', img]);
    execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
    execFileSync('mount', ['-o', 'loop', img, xfsMount]);
    stateDir = join(xfsMount, 'state');
    env = {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
    };
    fx = await buildOciFixture(work);
    // base: the fixture's three layers and a 48 MiB one; app: base + a 1 MiB top layer.
    await addLayer(fx.tag, 'base', { 'big.bin': randomBytes(48 * MiB) });
    await addLayer('base', 'app', { 'app.bin': randomBytes(1 * MiB) });
    await addLayer('base', 'bad', { 'bad.bin': Buffer.from('x') }, 'ab'.repeat(32));
    // Two images on a new layer nobody holds yet.
    await addLayer(fx.tag, 'mid', { 'mid.bin': randomBytes(4 * MiB) });
    await addLayer('mid', 'c', { 'c.bin': Buffer.from('c') });
    await addLayer('mid', 'd', { 'd.bin': Buffer.from('d') });
    // An image held on small volumes, and one on top of it whose new layer outgrows them.
    await addLayer(fx.tag, 'tiny', { 'tiny.txt': Buffer.from('tiny\n') });
    await addLayer('tiny', 'grown', { 'grown.bin': randomBytes(80 * MiB) });
    execFileSync('umoci', ['raw', 'unpack', '--image', `${fx.layout}:app`, join(work, 'app-ref')]);
    execFileSync('umoci', [
      'raw',
      'unpack',
      '--image',
      `${fx.layout}:grown`,
      join(work, 'grown-ref'),
    ]);
    for (const tag of ['base', 'app', 'bad', 'c', 'd', 'tiny', 'grown']) {
      const archive = ociArchiveOfTag(fx.layout, tag, work);
      archiveSizes.set(`images/${tag}.tar`, archive.length);
      await s3.putObject(bucket, `images/${tag}.tar`, archive);
    }
  });
  after(async () => {
    releaseStateDir(stateDir);
    execFileSync('umount', [xfsMount]);
    await s3.stop();
    execFileSync('rm', ['-rf', work]);
  });

  test('a second image on the same base applies only its top layer, and costs about that layer', async (t) => {
    const before0 = xfsUsed();
    await processImage('images/base.tar');
    const first = await show('images/base.tar');
    assert.equal(unpackDetail(first).layersApplied, 4);
    assert.equal(first.layers.length, 4);
    const before1 = xfsUsed();

    const app = await processImage('images/app.tar');
    const second = await show('images/app.tar');
    assert.equal(unpackDetail(second).layersApplied, 1, 'only the top layer is applied');
    assert.equal(unpackDetail(second).layersReused, 4);
    // Read by range: the held layers were never downloaded.
    const fetched = unpackDetail(second).bytesFetched as number;
    const size = archiveSizes.get('images/app.tar')!;
    t.diagnostic(`second image: ${fetched} bytes fetched of a ${size}-byte archive`);
    assert.equal(unpackDetail(second).reader, 'ranged');
    assert.ok(fetched < 0.05 * size, `fetched ${fetched} of ${size}`);
    assert.deepEqual(
      second.layers.slice(0, 4).map((l) => l.chainId),
      first.layers.map((l) => l.chainId),
      'the base layers are the same volumes',
    );
    assert.deepEqual(
      second.layers.map((l) => l.sharedBy),
      [2, 2, 2, 2, 1],
    );
    const growFirst = before1 - before0;
    const growSecond = xfsUsed() - before1;
    t.diagnostic(`pool growth: first image ${growFirst} bytes, second ${growSecond} bytes`);
    // The first image holds 48+ MiB of layers; the second adds 1 MiB of content and ext4 metadata.
    assert.ok(growFirst > 48 * MiB, `the first image grew the pool by ${growFirst}`);
    assert.ok(
      growSecond < 0.2 * growFirst,
      `the second image grew the pool by ${growSecond} bytes, the first by ${growFirst}`,
    );

    await assertEqualsUmoci(app.devicePath, join(work, 'app-ref'));
  });

  test('a digest mismatch above held layers leaves the pool as it was', async () => {
    const pool = hostInventory(stateDir).poolFiles;
    const r = await cli('process-image', '--s3-key', 'images/bad.tar', '--json');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /LAYER_DIGEST_MISMATCH/);
    assert.deepEqual(hostInventory(stateDir).poolFiles, pool);
    assert.deepEqual(hostInventory(stateDir).mounts, []);
  });

  test('two jobs needing the same new layer build it once', async () => {
    const [c, d] = await Promise.all([
      cli('process-image', '--s3-key', 'images/c.tar', '--json'),
      cli('process-image', '--s3-key', 'images/d.tar', '--json'),
    ]);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(d.code, 0, d.stderr);
    const applied = [await show('images/c.tar'), await show('images/d.tar')].map(
      (s) => unpackDetail(s).layersApplied as number,
    );
    // Fixture layers are held; "mid" is built by one of them; each applies its own top.
    assert.equal(applied[0]! + applied[1]!, 3, `layers applied: ${applied.join(' + ')}`);
    const cMid = (await show('images/c.tar')).layers[3]!;
    const dMid = (await show('images/d.tar')).layers[3]!;
    assert.equal(cMid.volume, dMid.volume, 'one volume for the shared new layer');
  });

  test('remove keeps layers another image uses; gc releases what no image uses', async () => {
    const base = await show('images/base.tar');
    const app = await show('images/app.tar');
    const r = json<{ removedObjects: number }>(
      await cli('remove', 'images/base.tar', '--force', '--json'),
    );
    assert.equal(r.removedObjects, 1, 'only its snapshot: every layer is shared with app');
    let files = hostInventory(stateDir).poolFiles;
    for (const l of base.layers) assert.ok(files.includes(`${l.volume}.img`), l.volume);
    for (const key of ['images/c.tar', 'images/d.tar'])
      json(await cli('remove', key, '--force', '--json'));
    files = hostInventory(stateDir).poolFiles;
    for (const l of app.layers) assert.ok(files.includes(`${l.volume}.img`), l.volume);

    // Its object deleted from S3, the daemon retires app (the image reads as removed, its
    // layers stay until gc): as ops/retire.ts does, once its snapshot is inactive.
    const snap = (await show('images/app.tar')) as Show & { snapshots: { objectId: number }[] };
    json(await cli('deactivate', String(snap.snapshots[0]!.objectId), '--json'));
    // The failed image links the held layers it reused (a retry uses them): retired too.
    const store = StateStore.open(stateDir);
    try {
      store.images.setStatus(app.image.id, 'removed');
      const bad = store.images.latestByKey('images/bad.tar')!;
      assert.equal(bad.status, 'failed');
      store.images.setStatus(bad.id, 'removed');
    } finally {
      store.close();
    }
    const gc = json<{ actions: { object: string; action: string; reason: string }[] }>(
      await cli('gc', '--json'),
    );
    const collected = gc.actions.filter((a) => /^layer \d+ \(sha256:/.test(a.reason));
    assert.deepEqual(
      collected.map((a) => a.object).sort(),
      app.layers.map((l) => l.volume).sort(),
      'gc says which layers it released',
    );
    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.poolFiles, [], 'no layer is left once no image uses it');
    assert.deepEqual(inv.loops, []);
    assert.deepEqual(inv.mounts, []);
  });
  test('an image whose new layer outgrows the volumes its held layers were made with completes on a grown clone', async (t) => {
    // The held image's layers on 64 MiB volumes (as if that host had set THINRELAY_VOLUME_SIZE).
    const r = await runCli(['process-image', '--s3-key', 'images/tiny.tar', '--json'], {
      ...env,
      THINRELAY_VOLUME_SIZE: '64M',
    });
    assert.equal(r.code, 0, r.stderr);
    const held = await show('images/tiny.tar');
    assert.deepEqual(
      held.layers.map((l) => l.volumeSizeBytes),
      [64 * MiB, 64 * MiB, 64 * MiB, 64 * MiB],
    );

    // Its 80 MiB layer does not fit a 64 MiB filesystem: the clone is made as large as the image needs.
    const out = await processImage('images/grown.tar');
    const grown = await show('images/grown.tar');
    const detail = unpackDetail(grown);
    assert.equal(detail.layersApplied, 1, 'only the new layer is applied');
    const needed = detail.volumeSizeBytes as number;
    t.diagnostic(`volume size chosen for the image: ${needed} bytes`);
    assert.ok(needed >= 4 * 80 * MiB, `${needed} bytes: 4x the archive's size or more`);
    const top = grown.layers.at(-1)!;
    assert.equal(top.volumeSizeBytes, needed, "the grown clone's size is recorded");
    assert.deepEqual(
      grown.layers.slice(0, -1).map((l) => [l.volume, l.volumeSizeBytes]),
      held.layers.map((l) => [l.volume, 64 * MiB]),
      'the held layers are shared and stay as they were',
    );
    assert.equal(statSync(join(stateDir, 'pool', `${top.volume}.img`)).size, needed);
    const device = execFileSync('blockdev', ['--getsize64', out.devicePath], { encoding: 'utf8' });
    assert.equal(Number(device), needed, "the image's snapshot has the grown size");
    await assertEqualsUmoci(out.devicePath, join(work, 'grown-ref'));
  });
});
