/**
 * The one whiteout model (layer/apply-layer.ts: whiteouts, opaque
 * directories wherever the marker stands, directory/file swaps, hard links,
 * hostile names and links), on small layers applied one after another to a
 * scratch directory. These are the cases of the retired member-index model
 * (image/layer-tree.ts), which a spooled archive used to go through as well:
 * the model that writes is the one that is tested.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageError } from '../../host-agent/src/errors.js';
import { applyLayer } from '../../host-agent/src/layer/index.js';
import { defaultLimits } from '../../host-agent/src/limits.js';
import { needsRoot } from '../helpers/root.js';
import { chunked, packTar, type PackEntry } from '../helpers/tar-fixtures.js';

const scratch = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-whiteouts-'));
after(() => fs.rmSync(scratch, { recursive: true, force: true }));
let n = 0;

/** The tree after applying `layers` in order: "type:path" (d, f, l), sorted. */
async function flatten(...layers: PackEntry[][]): Promise<string[]> {
  const root = join(scratch, `r${n++}`);
  fs.mkdirSync(root);
  for (const [i, entries] of layers.entries())
    await applyLayer(chunked(await packTar(entries)), {
      root,
      lower: i > 0,
      limits: defaultLimits,
    });
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(join(root, rel)).sort()) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const st = fs.lstatSync(join(root, path));
      out.push(`${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'}:${path}`);
      if (st.isDirectory()) walk(path);
    }
  };
  walk('');
  return out;
}

async function refused(code: string, ...layers: PackEntry[][]): Promise<void> {
  await assert.rejects(flatten(...layers), (err: unknown) => {
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

const d = (name: string): PackEntry => ({ name, type: 'directory', mode: 0o755 });
const f = (name: string, content = 'x'): PackEntry => ({ name, mode: 0o644, content });
const l = (name: string, linkname: string): PackEntry => ({ name, type: 'symlink', linkname });
const h = (name: string, linkname: string): PackEntry => ({ name, type: 'link', linkname });

describe('the whiteout model', { skip: needsRoot }, () => {
  it('whiteouts remove a lower file or directory and never appear', async () => {
    assert.deepEqual(
      await flatten(
        [d('a/'), f('a/x'), d('b/'), f('b/y'), f('c')],
        [f('a/.wh.x'), f('.wh.b'), f('.wh.c')],
      ),
      ['d:a'],
    );
  });

  it('an opaque marker after its directory entries hides only lower children', async () => {
    assert.deepEqual(
      await flatten(
        [d('d/'), f('d/old'), d('d/sub/'), f('d/sub/z')],
        [d('d/'), f('d/new'), f('d/.wh..wh..opq')],
      ),
      ['d:d', 'f:d/new'],
    );
  });

  it('a file replaces a directory and its subtree; a directory replaces a file', async () => {
    assert.deepEqual(
      await flatten([d('s/'), f('s/in'), f('t')], [f('s'), f('s/.wh.in'), d('t/'), f('t/x')]),
      ['f:s', 'd:t', 'f:t/x'],
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
    assert.deepEqual(await flatten([l('a', '/tmp')], [d('a/'), f('a/b')]), ['d:a', 'f:a/b']);
  });

  it('keeps hard links; a later layer replacing the target leaves the link its own file', async () => {
    assert.deepEqual(await flatten([f('t'), h('h', 't')]), ['f:h', 'f:t']);
    // The retired index model refused this image; the writer never did, and Docker and umoci
    // apply it the same way: the link keeps the first layer's content.
    assert.deepEqual(await flatten([f('t', 'old'), h('h', 't')], [f('t', 'new')]), ['f:h', 'f:t']);
    const root = join(scratch, `r${n - 1}`);
    assert.equal(fs.readFileSync(join(root, 'h'), 'utf8'), 'old');
    assert.equal(fs.readFileSync(join(root, 't'), 'utf8'), 'new');
  });
});
