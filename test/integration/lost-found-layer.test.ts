/**
 * A base layer that replaces lost+found (by a regular file, by a symlink):
 * an image on it works, and so does a later image on the same base whose
 * new layer needs a larger volume than the base was made with (its clone of
 * the base is grown). The image's tree keeps the layer's lost+found as the
 * layer wrote it; no host fault is blamed, no image failed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { okJson, runCli } from '../helpers/cli.js';
import { assertHostMatchesStore, releaseStateDir } from '../helpers/host-leaks.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { packTar, type PackEntry } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-lostfound';
const MiB = 1024 ** 2;

interface Show {
  image: { status: string };
  layers: { volume: string; volumeSizeBytes: number }[];
}

const replacements: Record<string, PackEntry> = {
  file: { name: 'lost+found', mode: 0o644, content: 'not a directory\n' },
  symlink: { name: 'lost+found', type: 'symlink', linkname: 'etc' },
};

describe('a base layer whose lost+found was replaced', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  const stateDirs: string[] = [];

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
  });
  after(async () => {
    for (const d of stateDirs) releaseStateDir(d);
    await s3.stop();
  });

  for (const [kind, replacement] of Object.entries(replacements)) {
    test(`by a ${kind}: a later image on that base needing a larger volume works`, async () => {
      const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-lostfound-'));
      stateDirs.push(stateDir);
      const env = {
        ...s3EnvFor(s3),
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_BUCKET: bucket,
        THINRELAY_RESERVE_BYTES: '0',
      };
      const base = await packTar([
        { name: 'etc/', type: 'directory', mode: 0o755 },
        { name: 'etc/hostname', mode: 0o644, content: `${kind}\n` },
        replacement,
      ]);
      const small = await packTar([{ name: 'small.txt', mode: 0o644, content: 'small\n' }]);
      const big = await packTar([{ name: 'big.bin', mode: 0o644, content: randomBytes(80 * MiB) }]);
      await s3.putObject(
        bucket,
        `images/${kind}-small.tar`,
        await ociArchiveOfLayers([base, small]),
      );
      await s3.putObject(bucket, `images/${kind}-big.tar`, await ociArchiveOfLayers([base, big]));

      // The base held on 64 MiB volumes; the big layer does not fit: its clone is grown.
      const first = await runCli(['process-image', '--s3-key', `images/${kind}-small.tar`], {
        ...env,
        THINRELAY_VOLUME_SIZE: '64M',
      });
      assert.equal(first.code, 0, first.stderr);
      const second = await runCli(
        ['process-image', '--s3-key', `images/${kind}-big.tar`, '--json'],
        env,
      );
      assert.equal(second.code, 0, second.stderr);
      const { devicePath } = JSON.parse(second.stdout) as { devicePath: string };
      const shown = okJson<Show>(await runCli(['show', `images/${kind}-big.tar`, '--json'], env));
      assert.equal(shown.image.status, 'ready');
      assert.equal(shown.layers[0]!.volumeSizeBytes, 64 * MiB, 'the base layer is shared');
      assert.ok(shown.layers[1]!.volumeSizeBytes > 64 * MiB, 'the top layer is on a grown clone');

      // The tree holds the layer's lost+found, as the layer wrote it.
      const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-lostfound-probe-'));
      execFileSync('mount', ['-o', 'ro', devicePath, mnt]);
      try {
        if (kind === 'file')
          assert.equal(readFileSync(join(mnt, 'lost+found'), 'utf8'), 'not a directory\n');
        else assert.equal(readlinkSync(join(mnt, 'lost+found')), 'etc');
        assert.equal(lstatSync(join(mnt, 'big.bin')).size, 80 * MiB);
        assert.equal(readFileSync(join(mnt, 'etc/hostname'), 'utf8'), `${kind}\n`);
      } finally {
        execFileSync('umount', [mnt]);
        rmdirSync(mnt);
      }
      assertHostMatchesStore(stateDir);
    });
  }
});
