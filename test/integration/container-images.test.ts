/**
 * Container images end to end: images built offline with umoci and skopeo
 * (docker-archive and oci-archive; outer gzip, zstd, xz; a tar+zstd layer),
 * uploaded to the S3 emulator and processed by the built CLI onto real loop
 * devices; each result must equal `umoci raw unpack` of the same image entry
 * for entry. Then the bad ones: digest mismatches, hostile whiteouts, a write
 * beneath a lower layer's symlink, a blob named twice, a layer that is not a
 * tar, and the hand-made `docker save` archive from issue 10.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { okJson as json, runCli, type CliResult } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { appendLayer, buildOciFixture, type OciFixture } from '../helpers/oci-fixtures.js';
import { ociArchiveOfTag } from '../helpers/oci-archive.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { compareTrees } from '../helpers/tree-compare.js';

const bucket = 'thinrelay-images';
const needsTools = needsRootAndTools(['umoci', 'skopeo', 'zstd', 'xz']);

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function tarStream(
  entries: { name: string; type?: 'symlink' | 'directory'; linkname?: string; body?: string }[],
): Promise<Buffer> {
  const p = pack();
  for (const e of entries) {
    if (e.type === 'symlink') p.entry({ name: e.name, type: 'symlink', linkname: e.linkname! });
    else if (e.type === 'directory') p.entry({ name: e.name, type: 'directory', mode: 0o755 });
    else p.entry({ name: e.name, mode: 0o644 }, e.body ?? '');
  }
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('container images', { skip: needsTools }, () => {
  let s3: S3Emulator;
  let work: string;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  let fx: OciFixture;
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);
  /** What is left in the spool (an archive read by range never makes one). */
  const spooled = (): string[] =>
    existsSync(join(stateDir, 'spool')) ? readdirSync(join(stateDir, 'spool')) : [];

  /** A copy of the fixture's layout with one more layer on `final`, as an oci-archive. */
  const withLayer = (
    name: string,
    layer: Buffer,
    diffId = sha256(layer),
    twice = false,
  ): Buffer => {
    const copy = join(work, `layout-${name}`);
    cpSync(fx.layout, copy, { recursive: true });
    appendLayer(copy, 'final', name, layer, 'application/vnd.oci.image.layer.v1.tar', diffId);
    if (twice)
      appendLayer(copy, name, name, layer, 'application/vnd.oci.image.layer.v1.tar', diffId);
    return ociArchiveOfTag(copy, name, work);
  };

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    work = mkdtempSync(join(tmpdir(), 'thinrelay-oci-'));
    stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-state-'));
    env = {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
    };
    fx = await buildOciFixture(work);
    const docker = readFileSync(fx.dockerArchive);
    const oci = readFileSync(fx.ociArchive);
    const zstd = (b: Buffer): Buffer =>
      execFileSync('zstd', ['-q', '-c'], { input: b, maxBuffer: 1 << 28 });
    const xz = (b: Buffer): Buffer => execFileSync('xz', ['-c'], { input: b, maxBuffer: 1 << 28 });
    await s3.putObject(bucket, 'images/docker.tar', docker);
    await s3.putObject(bucket, 'images/docker.tar.zst', zstd(docker));
    await s3.putObject(bucket, 'images/docker.tar.xz', xz(docker));
    await s3.putObject(bucket, 'images/oci.tar', oci);
    await s3.putObject(bucket, 'images/oci.tar.gz', gzipSync(oci));
    await s3.putObject(bucket, 'images/oci.tar.xz', xz(oci));
    await s3.putObject(
      bucket,
      'images/oci-zstd-layer.tar.zst',
      zstd(readFileSync(fx.ociZstdLayerArchive)),
    );
  });
  after(async () => {
    releaseStateDir(stateDir);
    await s3.stop();
    execFileSync('rm', ['-rf', work]);
  });

  const keys = [
    'images/docker.tar',
    'images/docker.tar.zst',
    'images/docker.tar.xz',
    'images/oci.tar',
    'images/oci.tar.gz',
    'images/oci.tar.xz',
    'images/oci-zstd-layer.tar.zst',
  ];
  /** Processes `key` and checks the device holds exactly the fixture's `umoci raw unpack` tree. */
  const assertEqualsReference = async (key: string): Promise<void> => {
    const r = await cli('process-image', '--s3-key', key, '--json');
    const out = json<{ outcome: string; devicePath: string }>(r);
    assert.equal(out.outcome, 'complete');
    const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
    execFileSync('mount', ['-o', 'ro', out.devicePath, mnt]);
    try {
      const diffs = await compareTrees(fx.reference, mnt, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      });
      assert.deepEqual(diffs, []);
      // The things the layers did, spelled out (compareTrees already covers them).
      const top = readdirSync(mnt).sort();
      assert.ok(!top.includes('manifest.json') && !top.includes('blobs'));
      assert.deepEqual(readdirSync(join(mnt, 'data')), ['new']);
      assert.equal(readFileSync(join(mnt, 'swapdir'), 'utf8'), 'nowfile\n');
      const cap = execFileSync(
        'getfattr',
        ['-n', 'security.capability', '-e', 'base64', join(mnt, 'usr/bin/tool')],
        { encoding: 'utf8' },
      );
      assert.match(cap, /security.capability=0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=/);
    } finally {
      execFileSync('umount', [mnt]);
      rmdirSync(mnt);
    }
    assert.deepEqual(spooled(), [], 'the spool is released');
  };

  for (const key of keys) {
    test(`${key} equals umoci raw unpack, entry for entry`, () => assertEqualsReference(key));
  }

  // `tar -C DIR -cf IMAGE.tar .` names every member "./…" and starts with "./" itself.
  for (const form of ['oci-dir', 'docker-dir'] as const) {
    for (const gz of [false, true]) {
      const key = `images/${form}-dot${gz ? '.tar.gz' : '.tar'}`;
      test(`${key} (a directory tarred as ".": ./ members) is the image, not a flat rootfs`, async () => {
        const dir = join(work, `${form}-${gz ? 'gz' : 'plain'}`);
        if (form === 'oci-dir') {
          execFileSync('skopeo', ['copy', '-q', `oci:${fx.layout}:${fx.tag}`, `oci:${dir}:app`]);
        } else {
          mkdirSync(dir);
          execFileSync('tar', ['-C', dir, '-xf', fx.dockerArchive]);
        }
        const tar = execFileSync('tar', ['-C', dir, '-cf', '-', '.'], { maxBuffer: 1 << 28 });
        assert.equal(tar.subarray(0, 2).toString(), './', 'the first member is the root "./"');
        await s3.putObject(bucket, key, gz ? gzipSync(tar) : tar);
        await assertEqualsReference(key);
        const show = json<{ container: { format: string } | null }>(
          await cli('show', key, '--json'),
        );
        assert.equal(show.container?.format, form === 'oci-dir' ? 'oci-archive' : 'docker-archive');
      });
    }
  }

  test('show --json and `thinrelay config` give the image config', async () => {
    const show = json<{
      container: { format: string; layers: unknown[]; config: Record<string, unknown> };
    }>(await cli('show', 'images/oci.tar.gz', '--json'));
    assert.equal(show.container.format, 'oci-archive');
    assert.equal(show.container.layers.length, 3);
    const config = json<{ format: string; config: Record<string, unknown> }>(
      await cli('config', 'images/docker.tar'),
    );
    assert.equal(config.format, 'docker-archive');
    assert.deepEqual(config.config.entrypoint, ['/usr/bin/tool']);
    assert.deepEqual(config.config.cmd, ['serve']);
    assert.ok((config.config.env as string[]).includes('APP=1'));
    assert.equal(config.config.workingDir, '/home/u');
    assert.equal(config.config.user, '1000:1001');
    assert.deepEqual(config.config.exposedPorts, ['8080/tcp']);
    assert.deepEqual(config.config.labels, { 'org.test': 'yes' });
    assert.equal(config.config.architecture, 'amd64');
  });

  /**
   * The fixture's image with its manifest lying: stored under a digest it does
   * not hash to (same JSON, other bytes; the descriptor's size made to match),
   * or named by an index descriptor whose size is wrong.
   */
  const manifestLie = (name: string, lie: 'digest' | 'size' | 'nested-index-digest'): Buffer => {
    const copy = join(work, `layout-${name}`);
    cpSync(fx.layout, copy, { recursive: true });
    const indexPath = join(copy, 'index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as {
      manifests: {
        mediaType?: string;
        digest: string;
        size: number;
        annotations?: Record<string, string>;
      }[];
    };
    const desc = index.manifests.find(
      (m) => m.annotations?.['org.opencontainers.image.ref.name'] === fx.tag,
    )!;
    if (lie === 'size') desc.size += 1;
    else if (lie === 'nested-index-digest') {
      // index.json → a nested index (stored under a digest it does not hash to) → the manifest.
      const nested = {
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [{ mediaType: desc.mediaType, digest: desc.digest, size: desc.size }],
      };
      const hex = sha256(Buffer.from(JSON.stringify(nested)));
      const other = Buffer.from(JSON.stringify(nested, null, 2));
      writeFileSync(join(copy, 'blobs/sha256', hex), other);
      Object.assign(desc, {
        mediaType: nested.mediaType,
        digest: `sha256:${hex}`,
        size: other.length,
      });
    } else {
      const blob = join(copy, 'blobs/sha256', desc.digest.slice(7));
      const other = Buffer.from(JSON.stringify(JSON.parse(readFileSync(blob, 'utf8')), null, 2));
      writeFileSync(blob, other);
      desc.size = other.length;
    }
    writeFileSync(indexPath, JSON.stringify(index));
    return ociArchiveOfTag(copy, fx.tag, work);
  };

  /** A copy of the fixture as an OCI layout directory (skopeo's `oci:DIR:app`), changed by `edit`, tarred by `tar`. */
  const layoutDirTar = (name: string, edit: (dir: string) => void, members: string[]): Buffer => {
    const dir = join(work, `dir-${name}`);
    execFileSync('skopeo', ['copy', '-q', `oci:${fx.layout}:${fx.tag}`, `oci:${dir}:app`]);
    edit(dir);
    return execFileSync('tar', ['-C', dir, '-cf', '-', ...members], { maxBuffer: 1 << 28 });
  };

  /** [name, archive, reason code, also uploaded gzip-wrapped (spooled, not read by range)] */
  const refusals: [string, () => Promise<Buffer>, string, boolean?][] = [
    [
      'manifest-digest',
      () => Promise.resolve(manifestLie('mdigest', 'digest')),
      'BLOB_DIGEST_MISMATCH',
      true,
    ],
    [
      'nested-index-digest',
      () => Promise.resolve(manifestLie('nindex', 'nested-index-digest')),
      'BLOB_DIGEST_MISMATCH',
      true,
    ],
    [
      'manifest-size',
      () => Promise.resolve(manifestLie('msize', 'size')),
      'BLOB_SIZE_MISMATCH',
      true,
    ],
    [
      'dot-layout-without-index',
      () => Promise.resolve(layoutDirTar('noindex', (d) => rmSync(join(d, 'index.json')), ['.'])),
      'IMAGE_FORMAT_UNKNOWN',
      true,
    ],
    [
      'layout-with-a-readme-first',
      () =>
        Promise.resolve(
          layoutDirTar('readme', (d) => writeFileSync(join(d, 'README'), 'the app image\n'), [
            'README',
            'blobs',
            'index.json',
            'oci-layout',
          ]),
        ),
      'IMAGE_FORMAT_UNKNOWN',
      true,
    ],
    [
      'zero-layers',
      () => {
        execFileSync('sh', ['-euc', 'umoci init --layout Z; umoci new --image Z:empty'], {
          cwd: work,
        });
        return Promise.resolve(ociArchiveOfTag(join(work, 'Z'), 'empty', work));
      },
      'IMAGE_NO_LAYERS',
      true,
    ],
    [
      'diff-id',
      async () => withLayer('diffid', await tarStream([{ name: 'x', body: 'x' }]), 'ab'.repeat(32)),
      'LAYER_DIGEST_MISMATCH',
    ],
    [
      'blob-digest',
      async () => {
        const archive = withLayer('blobdigest', await tarStream([{ name: 'y', body: 'original' }]));
        const at = archive.indexOf(Buffer.from('original'));
        archive.write('tampered', at);
        return archive;
      },
      'BLOB_DIGEST_MISMATCH',
    ],
    [
      'whiteout-dotdot',
      async () => withLayer('wdd', await tarStream([{ name: 'etc/../../.wh.passwd' }])),
      'LAYER_UNSAFE_WHITEOUT',
    ],
    [
      'whiteout-absolute',
      async () => withLayer('wabs', await tarStream([{ name: '/etc/.wh.hostname' }])),
      'LAYER_UNSAFE_WHITEOUT',
    ],
    [
      'whiteout-root',
      async () => withLayer('wroot', await tarStream([{ name: '.wh..' }])),
      'LAYER_UNSAFE_WHITEOUT',
    ],
    [
      'whiteout-through-symlink',
      async () => withLayer('wlink', await tarStream([{ name: 'etc-link/.wh.hostname' }])),
      'LAYER_UNSAFE_WHITEOUT',
      // Spooled too: the writer's whiteout rules are the only ones, whatever reads the archive.
      true,
    ],
    [
      'write-beneath-lower-symlink',
      async () => withLayer('escape', await tarStream([{ name: 'etc-link/evil', body: 'x' }])),
      'LAYER_UNSAFE_LINK',
    ],
    [
      'symlink-planted-then-written',
      async () => {
        const copy = join(work, 'layout-plant');
        cpSync(fx.layout, copy, { recursive: true });
        const l1 = await tarStream([{ name: 'up', type: 'symlink', linkname: '../../../../tmp' }]);
        const l2 = await tarStream([{ name: 'up/pwned', body: 'x' }]);
        appendLayer(
          copy,
          'final',
          'plant',
          l1,
          'application/vnd.oci.image.layer.v1.tar',
          sha256(l1),
        );
        appendLayer(
          copy,
          'plant',
          'plant',
          l2,
          'application/vnd.oci.image.layer.v1.tar',
          sha256(l2),
        );
        return ociArchiveOfTag(copy, 'plant', work);
      },
      'LAYER_UNSAFE_LINK',
      true,
    ],
    [
      'blob-named-twice',
      async () => withLayer('twice', await tarStream([{ name: 'z', body: 'z' }]), undefined, true),
      'IMAGE_BLOB_REPEATED',
    ],
    [
      'layer-not-a-tar',
      () =>
        Promise.resolve(
          withLayer(
            'nottar',
            Buffer.from('this is not a tar archive at all, just text\n'.repeat(40)),
          ),
        ),
      'LAYER_NOT_TAR',
    ],
  ];
  for (const [name, build, code, gzipToo] of refusals) {
    test(`refused with ${code}, nothing kept: ${name}${gzipToo === true ? ' (.tar and .tar.gz)' : ''}`, async () => {
      const archive = await build();
      for (const gz of gzipToo === true ? [false, true] : [false]) {
        const key = `bad/${name}${gz ? '.tar.gz' : '.tar'}`;
        await s3.putObject(bucket, key, gz ? gzipSync(archive) : archive);
        await assertRefused(key, code);
      }
    });
  }

  /** Processing `key` fails with `code` (exit 1, the image's fault) and leaves nothing behind. */
  async function assertRefused(key: string, code: string): Promise<void> {
    const before = hostInventory(stateDir);
    const r = await cli('process-image', '--s3-key', key);
    assert.equal(r.code, 1, r.stderr);
    // Read by range, an uncompressed layer's diff_id (= its blob digest) is checked first.
    const codes = code === 'BLOB_DIGEST_MISMATCH' ? '(?:BLOB|LAYER)_DIGEST_MISMATCH' : code;
    assert.match(r.stderr, new RegExp(`\\[${codes}\\]`));
    const after = hostInventory(stateDir);
    assert.deepEqual(after.loops, before.loops);
    assert.deepEqual(after.mounts, []);
    assert.deepEqual(after.poolFiles, before.poolFiles);
    assert.deepEqual(spooled(), []);
    execFileSync('sh', ['-c', 'test ! -e /tmp/pwned']);
    // Recorded as the image's failure with its code: permanent, not a host fault to retry.
    const show = json<{ image: { status: string; errorCode: string } }>(
      await cli('show', key, '--json'),
    );
    assert.equal(show.image.status, 'failed');
    assert.match(show.image.errorCode, new RegExp(`^${codes}$`));
  }

  test('the docker save archive of issue 10 (manifest.json, config.json, l1/layer.tar) is applied, not kept as files', async () => {
    const dir = join(work, 'issue10');
    mkdirSync(join(dir, 'l1'), { recursive: true });
    const layer = await tarStream([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/os-release', body: 'ID=app\n' },
    ]);
    writeFileSync(join(dir, 'l1/layer.tar'), layer);
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        config: { Cmd: ['/bin/sh'] },
        rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(layer)}`] },
      }),
    );
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([{ Config: 'config.json', RepoTags: ['app:1'], Layers: ['l1/layer.tar'] }]),
    );
    for (const [order, key] of [
      [['l1', 'l1/layer.tar', 'config.json', 'manifest.json'], 'images/app.tar'],
      [['manifest.json', 'config.json', 'l1', 'l1/layer.tar'], 'images/app-manifest-first.tar'],
    ] as const) {
      await s3.putObject(
        bucket,
        key,
        execFileSync('tar', ['-C', dir, '--no-recursion', '-cf', '-', ...order]),
      );
      const r = json<{ devicePath: string }>(await cli('process-image', '--s3-key', key, '--json'));
      const mnt = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
      execFileSync('mount', ['-o', 'ro', r.devicePath, mnt]);
      try {
        assert.deepEqual(readdirSync(mnt).sort(), ['etc', 'lost+found']);
        assert.equal(readFileSync(join(mnt, 'etc/os-release'), 'utf8'), 'ID=app\n');
      } finally {
        execFileSync('umount', [mnt]);
        rmdirSync(mnt);
      }
      const config = json<{ chosen: string; config: { cmd: string[] } }>(await cli('config', key));
      assert.equal(config.chosen, 'app:1');
      assert.deepEqual(config.config.cmd, ['/bin/sh']);
    }
  });
});
