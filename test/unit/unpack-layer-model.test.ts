/**
 * The path model in layer mode, against a lower filesystem given as a map
 * (the real one is lstat: see test/integration/layer-apply.test.ts): lower
 * paths are learned lazily, ancestors first and once each; a lower symlink
 * on a member's path is refused; subtrees are forgotten whole. Also the
 * whiteout name rules.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ImageError, type ImageFailureCode } from '../../host-agent/src/errors.js';
import {
  PathModel,
  type LowerTree,
  type NodeKind,
} from '../../host-agent/src/layer/path-policy.js';
import { isWhiteoutName, parseWhiteout } from '../../host-agent/src/layer/whiteout.js';

const limits = { maxPathLength: 4095, maxPathDepth: 256 };
const what = (): string => "member 'x'";

/** A lower filesystem that counts how often each path is asked for. */
class FakeLower implements LowerTree {
  readonly asked = new Map<string, number>();
  constructor(private readonly tree: Record<string, NodeKind | undefined>) {}
  /** What the caller does on disk after PathModel.removeTree. */
  remove(path: string): void {
    for (const p of Object.keys(this.tree))
      if (p === path || p.startsWith(`${path}/`)) delete this.tree[p];
  }

  kindOf(path: string): NodeKind | undefined {
    this.asked.set(path, (this.asked.get(path) ?? 0) + 1);
    return this.tree[path];
  }
}

function refused(fn: () => unknown, code: ImageFailureCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ImageError);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

const lowerTree = (): FakeLower =>
  new FakeLower({
    usr: 'dir',
    'usr/bin': 'dir',
    'usr/bin/tool': 'file',
    etc: 'symlink',
    home: 'dir',
    'home/u': 'symlink',
    data: 'file',
  });

function layeredModel(lower: FakeLower): PathModel {
  return new PathModel({ layered: true, lower, unsafeLinkCode: 'LAYER_UNSAFE_LINK' });
}

describe('PathModel over lower layers', () => {
  it('learns lower directories lazily, each path once, and creates only what is missing', () => {
    const lower = lowerTree();
    const model = layeredModel(lower);
    assert.deepEqual(model.missingAncestors('usr/bin/new/deeper/f', what), [
      'usr/bin/new',
      'usr/bin/new/deeper',
    ]);
    assert.equal(model.get('usr/bin'), 'dir');
    assert.ok(model.isLowerDirectory('usr') && model.isLowerDirectory('usr/bin'));
    assert.equal(model.lookup('usr/bin/tool'), 'file');
    assert.equal(model.lookup('usr/bin/tool'), 'file');
    assert.deepEqual(model.missingAncestors('usr/bin/other', what), []);
    assert.equal(lower.asked.get('usr'), 1);
    assert.equal(lower.asked.get('usr/bin'), 1);
    assert.equal(lower.asked.get('usr/bin/tool'), 1);
    // Nothing below a directory this unpack made is asked for: it was empty.
    model.set('usr/bin/new', 'dir');
    assert.equal(model.lookup('usr/bin/new/x'), undefined);
    assert.equal(lower.asked.get('usr/bin/new/x'), undefined);
    assert.ok(!model.isLowerDirectory('usr/bin/new'));
  });

  it('refuses a member beneath a lower symlink, with the layer code, and beneath a lower file', () => {
    const model = layeredModel(lowerTree());
    refused(() => model.missingAncestors('etc/passwd', what), 'LAYER_UNSAFE_LINK');
    refused(() => model.missingAncestors('home/u/.ssh/authorized_keys', what), 'LAYER_UNSAFE_LINK');
    refused(() => model.missingAncestors('data/x', what), 'ARCHIVE_CONFLICT');
    // Only the path up to the link was asked for, never beyond it.
    const lower = lowerTree();
    const again = layeredModel(lower);
    refused(() => again.missingAncestors('etc/a/b/c', what), 'LAYER_UNSAFE_LINK');
    assert.deepEqual([...lower.asked.keys()], ['etc']);
  });

  it('tells where a path leads for whiteouts and hard link targets, never through a link', () => {
    const model = layeredModel(lowerTree());
    assert.equal(model.parentState('usr/bin/tool', what, 'LAYER_UNSAFE_LINK'), 'dir');
    assert.equal(model.parentState('nothere/x/y', what, 'LAYER_UNSAFE_LINK'), 'missing');
    assert.equal(model.parentState('data/x', what, 'LAYER_UNSAFE_WHITEOUT'), 'not-dir');
    assert.equal(model.parentState('etc', what, 'LAYER_UNSAFE_WHITEOUT'), 'dir');
    refused(() => model.parentState('etc/shadow', what, 'LAYER_UNSAFE_LINK'), 'LAYER_UNSAFE_LINK');
    refused(
      () => model.parentState('home/u/x', what, 'LAYER_UNSAFE_WHITEOUT'),
      'LAYER_UNSAFE_WHITEOUT',
    );
  });

  it('forgets a removed subtree whole, and a directory made again starts empty', () => {
    const lower = lowerTree();
    const model = layeredModel(lower);
    assert.deepEqual(model.missingAncestors('usr/bin/x', what), []);
    assert.equal(model.lookup('usr/bin/tool'), 'file');
    model.set('usr/bin/x', 'file');
    model.set('usr/bin/d', 'dir');
    model.set('usr/bin/d/y', 'file');
    assert.deepEqual(model.removeTree('usr/bin').sort(), [
      'usr/bin',
      'usr/bin/d',
      'usr/bin/d/y',
      'usr/bin/tool',
      'usr/bin/x',
    ]);
    lower.remove('usr/bin');
    for (const p of ['usr/bin', 'usr/bin/x', 'usr/bin/d/y', 'usr/bin/tool'])
      assert.equal(model.get(p), undefined, p);
    // The fast path for "same directory as last time" must not survive the removal.
    assert.deepEqual(model.missingAncestors('usr/bin/z', what), ['usr/bin']);
    model.set('usr/bin', 'dir');
    assert.ok(!model.isLowerDirectory('usr/bin'));
    assert.equal(model.lookup('usr/bin/tool'), undefined);
    assert.equal(model.get('usr'), 'dir');
    assert.throws(() => model.removeTree(''));
  });

  it('without a lower filesystem (a base layer) knows only what it made', () => {
    const model = new PathModel({ layered: true });
    assert.equal(model.lookup('anything'), undefined);
    model.set('d', 'dir');
    model.set('d/f', 'file');
    assert.deepEqual(model.removeTree('d'), ['d', 'd/f']);
    assert.equal(model.get('d/f'), undefined);
    // A flat model keeps its rule: directories are never removed.
    assert.throws(() => new PathModel().removeTree('d'));
  });
});

describe('whiteout names', () => {
  const parse = (raw: string): ReturnType<typeof parseWhiteout> => parseWhiteout(raw, limits, what);

  it('tells whiteouts from ordinary members', () => {
    assert.ok(isWhiteoutName('etc/.wh.passwd'));
    assert.ok(isWhiteoutName('./.wh..wh..opq'));
    assert.ok(isWhiteoutName('a/.wh.dir/'));
    assert.ok(!isWhiteoutName('etc/passwd.wh.x'));
    assert.ok(!isWhiteoutName('.wh.dir/child'));
  });

  it('names the path removed, or the directory made opaque', () => {
    assert.deepEqual(parse('etc/.wh.passwd'), { dir: 'etc', target: 'etc/passwd', opaque: false });
    assert.deepEqual(parse('./.wh.etc-link'), { dir: '', target: 'etc-link', opaque: false });
    assert.deepEqual(parse('a/b/.wh..wh..opq'), { dir: 'a/b', target: 'a/b', opaque: true });
    assert.deepEqual(parse('.wh..wh..opq'), { dir: '', target: '', opaque: true });
  });

  it('refuses names that reach out of their directory, or remove the root', () => {
    for (const raw of [
      'etc/../../.wh.passwd',
      '../.wh.x',
      '/etc/.wh.passwd',
      'etc/.wh.pa\0sswd',
      '.wh..',
      '.wh...',
      'etc/.wh.',
    ]) {
      refused(() => parse(raw), 'LAYER_UNSAFE_WHITEOUT');
    }
  });
});
