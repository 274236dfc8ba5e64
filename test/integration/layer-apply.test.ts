/**
 * applyLayer on real loop-mounted ext4: an image built with umoci (explicit
 * and opaque whiteouts, an opaque marker after its directory's entries,
 * directory/file swaps both ways, hard links within a layer and to lower
 * files, a file replaced under a lower hard link, file capabilities,
 * symlinks) is applied layer by layer onto one filesystem, and after each
 * layer k the tree must equal `umoci raw unpack` of the image's first k
 * layers, entry for entry. Then hostile layers on a REAL lower filesystem
 * (a lower layer planted `etc -> /` or `etc -> ../../..`): each is refused
 * with its reason code, and the target outside the root is untouched.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { applyLayer, type LayerApplyStats } from '../../host-agent/src/image/apply-layer.js';
import { defaultLimits } from '../../host-agent/src/limits.js';
import { appendLayer, buildOciFixture } from '../helpers/oci-fixtures.js';
import { needsRoot } from '../helpers/root.js';
import { packTar, type PackEntry } from '../helpers/tar-fixtures.js';
import { compareTrees } from '../helpers/tree-compare.js';

const needsTools =
  needsRoot ||
  (['umoci', 'skopeo', 'zstd', 'mkfs.ext4'].some((t) => {
    try {
      execFileSync('sh', ['-c', `command -v ${t}`]);
      return false;
    } catch {
      return true;
    }
  })
    ? 'needs umoci, skopeo, zstd and e2fsprogs (.ci/run installs them)'
    : false);

const PLAIN = 'application/vnd.oci.image.layer.v1.tar';
/** security.capability v2: cap_net_raw (ping's), as raw bytes in a latin1 string. */
const CAP_NET_RAW = Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64').toString('latin1');
const MTIME = new Date('2022-03-04T05:06:07Z');

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A loop-mounted ext4 filesystem, mounted as the pipeline mounts layer volumes. */
interface Volume {
  root: string;
  release(): void;
}

const volumes: Volume[] = [];

function freshVolume(work: string, name: string): Volume {
  const file = join(work, `${name}.img`);
  const root = join(work, `${name}.mnt`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 64 * 1024 * 1024);
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', file]);
  fs.mkdirSync(root);
  const device = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  let mounted = false;
  const volume: Volume = {
    root,
    release: () => {
      if (mounted) execFileSync('umount', [root]);
      mounted = false;
      execFileSync('losetup', ['-d', device]);
      fs.rmSync(file, { force: true });
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
  volumes.push(volume);
  execFileSync('mount', ['-o', 'nosuid,nodev', device, root]);
  mounted = true;
  return volume;
}

function releaseVolumes(): void {
  for (const v of volumes.splice(0)) v.release();
}

/** The layers of `tag` in `layout`, base first, as plain tars. */
function layersOf(layout: string, tag: string): Buffer[] {
  const blob = (digest: string): Buffer =>
    fs.readFileSync(join(layout, 'blobs/sha256', digest.slice('sha256:'.length)));
  const index = JSON.parse(fs.readFileSync(join(layout, 'index.json'), 'utf8')) as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  const ref = index.manifests.find(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag,
  )!;
  const manifest = JSON.parse(blob(ref.digest).toString()) as {
    layers: { mediaType: string; digest: string }[];
  };
  return manifest.layers.map((l) => {
    const data = blob(l.digest);
    if (l.mediaType.endsWith('+gzip')) return gunzipSync(data);
    if (l.mediaType.endsWith('+zstd'))
      return execFileSync('zstd', ['-d', '-c', '-q'], { input: data, maxBuffer: 1 << 30 });
    return data;
  });
}

async function* chunks(data: Buffer, size = 4093): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) {
    await Promise.resolve();
    yield data.subarray(i, i + size);
  }
}

function apply(tar: Buffer, root: string, lower: boolean): Promise<LayerApplyStats> {
  return applyLayer(chunks(tar), { root, lower, limits: defaultLimits });
}

const file = (name: string, content: string, extra: Partial<PackEntry> = {}): PackEntry => ({
  name,
  mode: 0o644,
  mtime: MTIME,
  content,
  ...extra,
});
const dir = (name: string, extra: Partial<PackEntry> = {}): PackEntry => ({
  name,
  type: 'directory',
  mode: 0o755,
  mtime: MTIME,
  ...extra,
});
const whiteout = (name: string): PackEntry => file(name, '');

/**
 * Layer 4: a file replaces a lower file that has a lower hard link (the link
 * keeps the old inode: content, setuid, capability); a hard link to a lower
 * file; whiteouts of a symlink (never its target) and of a directory with its
 * subtree; an upper directory over a lower one (new owner, mode, xattr); a
 * directory over a lower file and a file over a lower directory; a new file
 * with a capability.
 */
const layer4 = (): Promise<Buffer> =>
  packTar([
    dir('usr/'),
    dir('usr/bin/'),
    file('usr/bin/tool', 'newbin', { mode: 0o755 }),
    dir('etc/'),
    { name: 'etc/hostname-hard', type: 'link', linkname: 'etc/hostname', mtime: MTIME },
    whiteout('.wh.etc-link'),
    dir('var/lib/'),
    whiteout('var/lib/.wh.app'),
    dir('home/u/', { mode: 0o700, uid: 1000, gid: 1001, pax: { 'SCHILY.xattr.user.dir': 'u' } }),
    dir('swapdir/', { mode: 0o750 }),
    file('swapdir/x', 'in a new directory'),
    file('swapfile', 'a file again'),
    dir('newdir/'),
    dir('newdir/sub/'),
    file('newdir/sub/ping', 'ping', {
      mode: 0o755,
      pax: { 'SCHILY.xattr.security.capability': CAP_NET_RAW },
    }),
    { name: 'newdir/sub/ping-link', type: 'link', linkname: 'newdir/sub/ping', mtime: MTIME },
    { name: 'newdir/alt', type: 'symlink', linkname: '/usr/bin/tool', mtime: MTIME },
  ]);

/**
 * Layer 5: an opaque marker after its directory's entries (keeps them, hides
 * the lower ones, also beneath an upper subdirectory); a whiteout after the
 * layer re-wrote the same path (keeps the upper one); a whiteout beneath a
 * missing directory (nothing to do); a file replacing one that a lower hard
 * link shares.
 */
const layer5 = (): Promise<Buffer> =>
  packTar([
    dir('data/', { mode: 0o711 }),
    dir('data/keep/'),
    file('data/keep/y', 'upper y'),
    file('data/z', 'upper z'),
    dir('etc/'),
    file('etc/a.conf', 'rewritten'),
    whiteout('etc/.wh.a.conf'),
    file('etc/hostname', 'new hostname'),
    whiteout('nothere/.wh.x'),
    whiteout('data/.wh..wh..opq'),
    dir('home/u/', { mode: 0o750, uid: 1000, gid: 1001 }),
    file('home/newfile', 'in a lower directory the layer does not list'),
    whiteout('usr/bin/.wh.alt'),
  ]);

describe('applyLayer', { skip: needsTools }, () => {
  let work: string;
  let layout: string;
  /** Tags of the image's prefixes: tags[k-1] has k layers. */
  const tags = ['base', 'v2', 'final', 'l4', 'l5'];

  before(async () => {
    work = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-layer-apply-'));
    const fx = await buildOciFixture(work);
    layout = fx.layout;
    const l4 = await layer4();
    appendLayer(layout, 'final', 'l4', l4, PLAIN, sha256(l4));
    const l5 = await layer5();
    appendLayer(layout, 'l4', 'l5', l5, PLAIN, sha256(l5));
    for (const tag of tags) {
      const ref = join(work, `ref-${tag}`);
      execFileSync('umoci', ['raw', 'unpack', '--image', `${layout}:${tag}`, ref], {
        stdio: 'pipe',
      });
    }
  });

  after(() => {
    releaseVolumes();
    if (work !== undefined) fs.rmSync(work, { recursive: true, force: true });
  });

  it('after each layer k, the filesystem equals umoci raw unpack of the first k layers', async () => {
    const layers = layersOf(layout, 'l5');
    assert.equal(layers.length, tags.length);
    const vol = freshVolume(work, 'chain');
    const stats: LayerApplyStats[] = [];
    for (const [i, tar] of layers.entries()) {
      stats.push(await apply(tar, vol.root, i > 0));
      const diffs = await compareTrees(join(work, `ref-${tags[i]}`), vol.root, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      });
      assert.deepEqual(diffs, [], `after layer ${i + 1} (${tags[i]})`);
    }
    // What the layers did, spelled out (compareTrees already covers it).
    const at = (p: string): string => join(vol.root, p);
    assert.equal(fs.readFileSync(at('usr/bin/tool2'), 'utf8'), 'bin');
    assert.equal(fs.readFileSync(at('usr/bin/tool'), 'utf8'), 'newbin');
    assert.equal(fs.readFileSync(at('etc/hostname-hard'), 'utf8'), 'hi\n');
    assert.equal(fs.readFileSync(at('etc/hostname'), 'utf8'), 'new hostname');
    assert.equal(fs.readFileSync(at('etc/a.conf'), 'utf8'), 'rewritten');
    assert.ok(!fs.existsSync(at('etc-link')) && fs.statSync(at('etc')).isDirectory());
    assert.ok(!fs.existsSync(at('var/lib/app')));
    assert.deepEqual(fs.readdirSync(at('data')).sort(), ['keep', 'z']);
    assert.deepEqual(fs.readdirSync(at('data/keep')), ['y']);
    assert.equal(stats[1]!.whiteouts, 3);
    assert.equal(stats[3]!.whiteouts, 2);
    assert.equal(stats[3]!.removed, 2);
    assert.equal(stats[4]!.whiteouts, 4);
  });
});
