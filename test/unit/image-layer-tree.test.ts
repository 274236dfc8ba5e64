/**
 * The layer semantics on member indexes (no root, no tools): whiteouts,
 * opaque directories wherever the marker stands, directory/file swaps,
 * hard links across layers, and the hostile cases. Also how archives are
 * told apart by their first members.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pack } from 'tar-stream';
import { ImageError } from '../../host-agent/src/errors.js';
import { LayerTree } from '../../host-agent/src/image/layer-tree.js';
import { isContainerArchive } from '../../host-agent/src/image/sniff.js';
import { indexTar } from '../../host-agent/src/image/tar-index.js';
import { defaultLimits } from '../../host-agent/src/limits.js';

type Entry = { name: string; type?: 'symlink' | 'directory' | 'link'; linkname?: string };

const dir = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-layers-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;

async function layer(
  entries: Entry[],
): Promise<{ fd: number; members: ReturnType<typeof indexTar> }> {
  const p = pack();
  for (const e of entries) {
    if (e.type === undefined) p.entry({ name: e.name }, 'x');
    else p.entry({ name: e.name, type: e.type, linkname: e.linkname });
  }
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  const file = join(dir, `l${n++}.tar`);
  fs.writeFileSync(file, Buffer.concat(chunks));
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  return { fd, members: indexTar({ fd, offset: 0, length: size }, 'layer', 1000, 'LAYER_NOT_TAR') };
}

async function flatten(...layers: Entry[][]): Promise<string[]> {
  const tree = new LayerTree(defaultLimits);
  for (const [i, entries] of layers.entries()) tree.apply(i + 1, await layer(entries));
  return tree.ordered().map((node) => `${node.member.type[0]}:${node.member.name}`);
}

async function refused(code: string, ...layers: Entry[][]): Promise<void> {
  await assert.rejects(
    flatten(...layers),
    (err: unknown) => err instanceof ImageError && err.code === code,
  );
}

const d = (name: string): Entry => ({ name, type: 'directory' });
const f = (name: string): Entry => ({ name });
const l = (name: string, linkname: string): Entry => ({ name, type: 'symlink', linkname });

describe('layer tree', () => {
  it('whiteouts remove a lower file or directory and never appear', async () => {
    assert.deepEqual(
      await flatten(
        [d('a/'), f('a/x'), d('b/'), f('b/y'), f('c')],
        [f('a/.wh.x'), f('.wh.b'), f('.wh.c')],
      ),
      ['d:a/'],
    );
  });

  it('an opaque marker after its directory entries hides only lower children', async () => {
    assert.deepEqual(
      await flatten(
        [d('d/'), f('d/old'), d('d/sub/'), f('d/sub/z')],
        [d('d/'), f('d/new'), f('d/.wh..wh..opq')],
      ),
      ['d:d/', 'f:d/new'],
    );
  });

  it('a file replaces a directory and its subtree; a directory replaces a file', async () => {
    assert.deepEqual(
      await flatten([d('s/'), f('s/in'), f('t')], [f('s'), f('s/.wh.in'), d('t/'), f('t/x')]),
      ['f:s', 'd:t/', 'f:t/x'],
    );
  });

  it('refuses hostile whiteouts', async () => {
    await refused('LAYER_UNSAFE_WHITEOUT', [f('a')], [f('x/../../.wh.a')]);
    await refused('LAYER_UNSAFE_WHITEOUT', [f('a')], [f('/.wh.a')]);
    await refused('LAYER_UNSAFE_WHITEOUT', [f('a')], [f('.wh..')]);
    await refused('LAYER_UNSAFE_WHITEOUT', [d('etc/'), f('etc/p'), l('e', 'etc')], [f('e/.wh.p')]);
    await refused('LAYER_UNSAFE_WHITEOUT', [l('e', '/etc')], [f('e/.wh..wh..opq')]);
  });

  it('refuses a write beneath a symlink a lower layer planted', async () => {
    await refused('LAYER_UNSAFE_LINK', [l('up', '../../..')], [f('up/pwned')]);
    await refused('LAYER_UNSAFE_LINK', [l('a', '.')], [f('a/a/b')]);
  });

  it('a symlink replaced by a directory in an upper layer may be written beneath', async () => {
    assert.deepEqual(await flatten([l('a', '/tmp')], [d('a/'), f('a/b')]), ['d:a/', 'f:a/b']);
  });

  it('keeps hard links, and refuses one whose target a later layer replaced', async () => {
    assert.deepEqual(await flatten([f('t'), { name: 'h', type: 'link', linkname: 't' }]), [
      'f:t',
      'h:h',
    ]);
    await refused(
      'LAYER_UNSAFE_LINK',
      [f('t'), { name: 'h', type: 'link', linkname: 't' }],
      [f('t')],
    );
  });
});

describe('archive kind by first members', () => {
  it('knows container archives and leaves root filesystems alone', () => {
    assert.equal(isContainerArchive(['blobs/', 'blobs/sha256/']), true);
    assert.equal(isContainerArchive([`${'a'.repeat(64)}.tar`]), true);
    assert.equal(isContainerArchive(['manifest.json']), true);
    assert.equal(isContainerArchive(['l1/', 'l1/layer.tar']), true);
    assert.equal(isContainerArchive(['./', './bin/', './bin/sh']), false);
    assert.equal(isContainerArchive(['etc/', 'etc/hostname']), false);
    assert.equal(isContainerArchive([]), false);
  });

  it('looks past the root entry `tar -C DIR -cf X .` writes first', () => {
    // skopeo's oci:DIR layout and an unpacked docker save, tarred as ".": readdir order.
    assert.equal(isContainerArchive(['./', './blobs/', './blobs/sha256/']), true);
    assert.equal(isContainerArchive(['./', './oci-layout', './index.json']), true);
    assert.equal(isContainerArchive(['./', './index.json']), true);
    assert.equal(isContainerArchive(['./', `./${'b'.repeat(64)}.tar`, './manifest.json']), true);
    assert.equal(isContainerArchive(['.', 'manifest.json']), true);
    assert.equal(isContainerArchive(['./', './l1/', './l1/layer.tar']), true);
    assert.equal(isContainerArchive(['./']), false);
    assert.equal(isContainerArchive(['./', './etc/', './etc/index.json']), false);
  });
});
