/**
 * A flat tar and a container layer with the same bytes are unpacked by
 * different rules (`.wh.` names are whiteouts in a layer, ordinary files in
 * a flat tar), so they must never share a volume, whichever comes first:
 * the flat image gets the tree `tar -xpf` gives, the container image the
 * tree `umoci raw unpack` gives, in both orders. Images built with umoci.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { okJson as json, runCli } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { ociArchiveOfTag } from '../helpers/oci-archive.js';
import { tarOf } from '../helpers/oci-fixtures.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { compareTrees } from '../helpers/tree-compare.js';

const bucket = 'thinrelay-images';
const needsTools = needsRootAndTools(['umoci']);

describe('a flat tar and a layer with the same bytes', { skip: needsTools }, () => {
  let s3: S3Emulator;
  let work: string;
  /** `tar -xpf` of the flat tar, and `umoci raw unpack` of the image whose one layer it is. */
  let flatReference: string;
  let imageReference: string;
  const stateDirs: string[] = [];

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    work = mkdtempSync(join(tmpdir(), 'thinrelay-flatkey-'));
    const stage = join(work, 'stage');
    mkdirSync(join(stage, 'etc'), { recursive: true });
    mkdirSync(join(stage, 'opt'));
    writeFileSync(join(stage, 'etc/hostname'), 'box\n');
    writeFileSync(join(stage, 'etc/.wh.passwd'), '');
    writeFileSync(join(stage, 'opt/keep'), 'kept\n');
    writeFileSync(join(stage, 'opt/.wh..wh..opq'), '');
    const tar = await tarOf(stage, [
      'etc',
      'etc/hostname',
      'etc/.wh.passwd',
      'opt',
      'opt/keep',
      'opt/.wh..wh..opq',
    ]);
    writeFileSync(join(work, 'layer.tar'), tar);
    flatReference = join(work, 'flat-ref');
    mkdirSync(flatReference);
    execFileSync('tar', ['-xpf', join(work, 'layer.tar'), '-C', flatReference]);
    execFileSync(
      'sh',
      [
        '-euc',
        `umoci init --layout L; umoci new --image L:empty
         umoci raw add-layer --image L:empty --tag app layer.tar
         umoci raw unpack --image L:app image-ref`,
      ],
      { cwd: work },
    );
    imageReference = join(work, 'image-ref');
    // Uncompressed, so the flat tar's sha256 is the layer's diff_id and chain ID.
    await s3.putObject(bucket, 'flat.tar', tar);
    await s3.putObject(bucket, 'image.tar', ociArchiveOfTag(join(work, 'L'), 'app', work));
  });
  after(async () => {
    for (const dir of stateDirs) releaseStateDir(dir);
    await s3.stop();
    execFileSync('rm', ['-rf', work]);
  });

  /** Processes `key` and checks its device holds exactly `reference`; returns its layer's volume. */
  async function assertTree(
    env: NodeJS.ProcessEnv,
    key: string,
    reference: string,
  ): Promise<string> {
    const out = json<{ outcome: string; devicePath: string }>(
      await runCli(['process-image', '--s3-key', key, '--json'], env),
    );
    assert.ok(['complete', 'already-complete'].includes(out.outcome), out.outcome);
    const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
    execFileSync('mount', ['-o', 'ro', out.devicePath, mnt]);
    try {
      const diffs = await compareTrees(reference, mnt, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      });
      assert.deepEqual(diffs, [], `${key}: the tree differs from its reference`);
      const names = readdirSync(join(mnt, 'etc')).sort();
      assert.deepEqual(
        names,
        key === 'flat.tar' ? ['.wh.passwd', 'hostname'] : ['hostname'],
        `${key}: a flat tar keeps .wh. files, a layer's are whiteouts`,
      );
    } finally {
      execFileSync('umount', [mnt]);
      rmdirSync(mnt);
    }
    const show = json<{ layers: { volume: string; chainId: string }[] }>(
      await runCli(['show', key, '--json'], env),
    );
    assert.equal(show.layers.length, 1);
    return show.layers[0]!.volume;
  }

  for (const order of [
    ['flat.tar', 'image.tar'],
    ['image.tar', 'flat.tar'],
  ] as const) {
    test(`${order[0]} then ${order[1]}: each gets its own tree and volume`, async () => {
      const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-state-'));
      stateDirs.push(stateDir);
      const env = {
        ...s3EnvFor(s3),
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BUCKET: bucket,
        THINRELAY_RESERVE_BYTES: '0',
      };
      const ref = (key: string): string => (key === 'flat.tar' ? flatReference : imageReference);
      const first = await assertTree(env, order[0], ref(order[0]));
      const second = await assertTree(env, order[1], ref(order[1]));
      assert.notEqual(first, second, 'no volume is shared across the two rules');
      // And the first image is still what it was.
      await assertTree(env, order[0], ref(order[0]));
    });
  }
});
