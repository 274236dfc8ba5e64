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
import { after, before, describe, it, type TestContext } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { ImageError, type ImageFailureCode } from '../../host-agent/src/errors.js';
import { applyLayer, type LayerApplyStats } from '../../host-agent/src/layer/apply-layer.js';
import { defaultLimits } from '../../host-agent/src/limits.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { appendLayer, buildOciFixture } from '../helpers/oci-fixtures.js';
import { needsRootAndTools } from '../helpers/root.js';
import { packTar, type PackEntry } from '../helpers/tar-fixtures.js';
import { compareTrees, snapshotTree, diffSnapshots } from '../helpers/tree-compare.js';

const needsTools = needsRootAndTools(['umoci', 'skopeo', 'zstd', 'mkfs.ext4']);

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

function loopsOf(file: string): string[] {
  const out = execFileSync('losetup', ['--list', '--noheadings', '--output', 'NAME', '-j', file], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((l) => l.trim() !== '');
}

function freshVolume(work: string, name: string): Volume {
  const file = join(work, `${name}.img`);
  const root = join(work, `${name}.mnt`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 64 * 1024 * 1024);
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', file]);
  fs.mkdirSync(root);
  const device = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  let mounted = false;
  let attached = true;
  const volume: Volume = {
    root,
    release: () => {
      if (mounted) execFileSync('umount', [root]);
      mounted = false;
      // Only the devices still backed by our file: another process may have cleared ours.
      if (attached) for (const d of loopsOf(file)) execFileSync('losetup', ['-d', d]);
      attached = false;
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

/** No loop device or mount of ours may outlive the tests; then the work directory goes. */
function assertNothingLeft(work: string): void {
  const left = hostInventory(work);
  releaseStateDir(work);
  assert.deepEqual(left.loops, [], 'loop devices left behind');
  assert.deepEqual(left.mounts, [], 'mounts left behind');
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

/**
 * Layer 6: an opaque marker first, as docker writes it (the lower children
 * go, the directory's own upper entries follow); device nodes and a fifo,
 * one of them over a lower file; a symlink over a lower directory.
 */
const layer6 = (): Promise<Buffer> =>
  packTar([
    whiteout('home/.wh..wh..opq'),
    dir('home/', { mode: 0o755 }),
    dir('home/u/', { mode: 0o700, uid: 1000, gid: 1001 }),
    file('home/u/new', 'only this', { uid: 1000, gid: 1001 }),
    dir('dev/'),
    {
      name: 'dev/null',
      type: 'character-device',
      devmajor: 1,
      devminor: 3,
      mode: 0o666,
      mtime: MTIME,
    },
    {
      name: 'dev/loopx',
      type: 'block-device',
      devmajor: 7,
      devminor: 200,
      mode: 0o660,
      mtime: MTIME,
    },
    { name: 'etc/hostname-hard', type: 'fifo', mode: 0o600, mtime: MTIME },
    { name: 'newdir', type: 'symlink', linkname: 'usr', mtime: MTIME },
  ]);

describe('applyLayer', { skip: needsTools }, () => {
  let work: string;
  let layout: string;
  /** Tags of the image's prefixes: tags[k-1] has k layers. */
  const tags = ['base', 'v2', 'final', 'l4', 'l5', 'l6'];

  before(async () => {
    work = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-layer-apply-'));
    const fx = await buildOciFixture(work);
    layout = fx.layout;
    const l4 = await layer4();
    appendLayer(layout, 'final', 'l4', l4, PLAIN, sha256(l4));
    const l5 = await layer5();
    appendLayer(layout, 'l4', 'l5', l5, PLAIN, sha256(l5));
    const l6 = await layer6();
    appendLayer(layout, 'l5', 'l6', l6, PLAIN, sha256(l6));
    for (const tag of tags) {
      const ref = join(work, `ref-${tag}`);
      execFileSync('umoci', ['raw', 'unpack', '--image', `${layout}:${tag}`, ref], {
        stdio: 'pipe',
      });
    }
  });

  after(() => {
    releaseVolumes();
    if (work !== undefined) assertNothingLeft(work);
  });

  it('after each layer k, the filesystem equals umoci raw unpack of the first k layers', async () => {
    const layers = layersOf(layout, 'l6');
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
    assert.ok(fs.lstatSync(at('etc/hostname-hard')).isFIFO());
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
    assert.deepEqual(fs.readdirSync(at('home')), ['u']);
    assert.deepEqual(fs.readdirSync(at('home/u')), ['new']);
    assert.equal(fs.readlinkSync(at('newdir')), 'usr');
    assert.equal(stats[5]!.removed, 2);
  });
});

/** Every entry under `dir` with its content, as one comparable text. */
function listing(dir: string): string {
  const lines: string[] = [];
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const abs = join(d, name);
      const st = fs.lstatSync(abs);
      const content = st.isFile() ? fs.readFileSync(abs, 'utf8') : '';
      lines.push(`${abs} ${st.mode} ${st.nlink} ${st.mtimeMs} ${content}`);
      if (st.isDirectory()) walk(abs);
    }
  };
  walk(dir);
  return lines.join('\n');
}

async function refusedWith(code: ImageFailureCode, run: () => Promise<unknown>): Promise<void> {
  await assert.rejects(run, (err: unknown) => {
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

describe(
  'applyLayer refuses hostile layers over a real lower filesystem',
  { skip: needsTools },
  () => {
    let work: string;
    let outside: string;
    before(() => {
      work = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-layer-hostile-'));
      outside = join(work, 'outside');
      fs.mkdirSync(outside);
      fs.writeFileSync(join(outside, 'passwd'), 'untouched passwd');
      fs.writeFileSync(join(outside, 'shadow'), 'untouched shadow');
    });
    after(() => {
      releaseVolumes();
      if (work !== undefined) assertNothingLeft(work);
    });

    /** Upper layers, each refused at its first member, with the code it must get. */
    const uppers: { name: string; code: ImageFailureCode; entries: PackEntry[] }[] = [
      {
        name: 'a write beneath the link',
        code: 'LAYER_UNSAFE_LINK',
        entries: [file('etc/passwd', 'pwned')],
      },
      {
        name: 'a write deeper beneath the link',
        code: 'LAYER_UNSAFE_LINK',
        entries: [file('etc/sub/deeper', 'pwned')],
      },
      {
        name: 'a directory beneath the link',
        code: 'LAYER_UNSAFE_LINK',
        entries: [dir('etc/newdir/')],
      },
      {
        name: 'a hard link to a file beneath the link',
        code: 'LAYER_UNSAFE_LINK',
        entries: [{ name: 'stolen', type: 'link', linkname: 'etc/shadow', mtime: MTIME }],
      },
      {
        name: 'a hard link to the link itself',
        code: 'LAYER_UNSAFE_LINK',
        entries: [{ name: 'stolen', type: 'link', linkname: 'etc', mtime: MTIME }],
      },
      {
        name: 'a whiteout beneath the link',
        code: 'LAYER_UNSAFE_WHITEOUT',
        entries: [whiteout('etc/.wh.passwd')],
      },
      {
        name: 'an opaque whiteout of the link',
        code: 'LAYER_UNSAFE_WHITEOUT',
        entries: [whiteout('etc/.wh..wh..opq')],
      },
    ];

    const targets = [
      { link: '/', root: true },
      { link: '../../..', root: true },
      { link: 'outside (absolute)', root: false },
      { link: '../outside', root: false },
    ];

    for (const target of targets) {
      it(`a lower layer plants etc -> ${target.link}: every upper use of it is refused, nothing changes`, async (t: TestContext) => {
        const link = target.link === 'outside (absolute)' ? outside : target.link;
        const vol = freshVolume(work, `planted-${targets.indexOf(target)}`);
        t.after(() => vol.release());
        const base = await packTar([
          { name: 'etc', type: 'symlink', linkname: link, mtime: MTIME },
          dir('home/'),
          file('home/f', 'lower'),
        ]);
        await apply(base, vol.root, false);
        assert.equal(fs.readlinkSync(join(vol.root, 'etc')), link);
        const lowerBefore = await snapshotTree(vol.root);
        const outsideBefore = listing(outside);
        for (const upper of uppers) {
          const tar = await packTar([...upper.entries, file('home/g', 'after the hostile member')]);
          await refusedWith(upper.code, () => apply(tar, vol.root, true));
          assert.equal(listing(outside), outsideBefore, `${upper.name}: outside changed`);
          assert.deepEqual(
            diffSnapshots(lowerBefore, await snapshotTree(vol.root)),
            [],
            `${upper.name}: the volume changed`,
          );
          for (const p of ['/passwd', '/shadow', '/sub', '/newdir']) {
            assert.ok(!fs.existsSync(p), `${upper.name}: ${p} appeared`);
          }
        }
        assert.equal(fs.readFileSync(join(outside, 'passwd'), 'utf8'), 'untouched passwd');
        assert.equal(fs.readFileSync(join(outside, 'shadow'), 'utf8'), 'untouched shadow');
        if (!target.root) {
          // A directory over the lower link replaces the link itself: writes then stay inside.
          const tar = await packTar([dir('etc/'), file('etc/passwd', 'inside')]);
          await apply(tar, vol.root, true);
          assert.ok(fs.lstatSync(join(vol.root, 'etc')).isDirectory());
          assert.equal(fs.readFileSync(join(vol.root, 'etc/passwd'), 'utf8'), 'inside');
          assert.equal(listing(outside), outsideBefore);
        }
      });
    }

    it('refuses unsafe whiteout names, a link chain and a link planted by the same layer', async (t: TestContext) => {
      const vol = freshVolume(work, 'names');
      t.after(() => vol.release());
      await apply(
        await packTar([
          dir('etc/'),
          file('etc/passwd', 'lower'),
          { name: 'a', type: 'symlink', linkname: '.', mtime: MTIME },
        ]),
        vol.root,
        false,
      );
      const before = await snapshotTree(vol.root);
      const cases: [ImageFailureCode, PackEntry[]][] = [
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('etc/../../.wh.passwd')]],
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('/etc/.wh.passwd')]],
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('.wh..')]],
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('etc/.wh...')]],
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('.wh.')]],
        ['LAYER_UNSAFE_WHITEOUT', [whiteout('a/.wh.etc')]],
        ['LAYER_UNSAFE_LINK', [file('a/a/etc/passwd', 'pwned')]],
        ['ARCHIVE_PATH_ESCAPE', [file('../escape', 'pwned')]],
        ['ARCHIVE_PATH_ESCAPE', [file('/abs', 'pwned')]],
        ['ARCHIVE_CONFLICT', [{ name: './', type: 'symlink', linkname: '/', mtime: MTIME }]],
        ['ARCHIVE_CONFLICT', [file('.', 'the root as a file')]],
        // Last: it leaves its link behind (written before the refused member).
        [
          'LAYER_UNSAFE_LINK',
          [
            { name: 'up', type: 'symlink', linkname: '../../..', mtime: MTIME },
            file('up/x', 'pwned'),
          ],
        ],
      ];
      for (const [code, entries] of cases) {
        const tar = await packTar(entries);
        await refusedWith(code, () => apply(tar, vol.root, true));
        const sameLayerLink = entries.length > 1;
        const diffs = diffSnapshots(before, await snapshotTree(vol.root));
        // The same-layer link case wrote its link before the refused member.
        assert.deepEqual(
          sameLayerLink ? diffs.filter((d) => !d.startsWith('up:') && !d.startsWith('.:')) : diffs,
          [],
        );
      }
      assert.ok(!fs.existsSync(join(vol.root, '..', 'escape')));
    });

    it('in a base layer, whiteouts remove nothing and never appear', async (t: TestContext) => {
      const vol = freshVolume(work, 'base-whiteouts');
      t.after(() => vol.release());
      const stats = await apply(
        await packTar([
          dir('d/'),
          file('d/kept', 'written before the opaque marker'),
          whiteout('d/.wh..wh..opq'),
          file('x', 'written before its whiteout'),
          whiteout('.wh.x'),
          whiteout('.wh.nothing'),
          whiteout('missing/.wh.y'),
        ]),
        vol.root,
        false,
      );
      assert.deepEqual(stats, { entries: 7, bytes: 59, whiteouts: 4, removed: 0 });
      assert.deepEqual(fs.readdirSync(vol.root).sort(), ['d', 'lost+found', 'x']);
      assert.deepEqual(fs.readdirSync(join(vol.root, 'd')), ['kept']);
    });

    it('takes only a plain tar: gzip, empty and non-tar streams are LAYER_NOT_TAR; an abort stops it', async (t: TestContext) => {
      const vol = freshVolume(work, 'streams');
      t.after(() => vol.release());
      const { gzipSync } = await import('node:zlib');
      const tar = await packTar([file('f', 'x')]);
      await refusedWith('LAYER_NOT_TAR', () => apply(gzipSync(tar), vol.root, false));
      await refusedWith('LAYER_NOT_TAR', () => apply(Buffer.alloc(0), vol.root, false));
      await refusedWith('LAYER_NOT_TAR', () =>
        apply(Buffer.from('{"not":"a tar"}'.repeat(64)), vol.root, false),
      );
      const controller = new AbortController();
      const reason = new Error('stop');
      const big = await packTar([file('big', 'y'.repeat(1 << 20))]);
      async function* slow(): AsyncGenerator<Buffer> {
        yield big.subarray(0, 4096);
        controller.abort(reason);
        await Promise.resolve();
        yield big.subarray(4096);
      }
      await assert.rejects(
        applyLayer(slow(), {
          root: vol.root,
          lower: false,
          limits: defaultLimits,
          signal: controller.signal,
        }),
        (err: unknown) => err === reason,
      );
      await refusedWith('LIMIT_ENTRY_COUNT', () =>
        applyLayer(chunks(tar), {
          root: vol.root,
          lower: true,
          limits: { ...defaultLimits, maxEntries: 0 },
        }),
      );
    });
  },
);
