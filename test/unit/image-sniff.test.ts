/**
 * How archives are told apart by their first members: a container image
 * layout (OCI or `docker save`, tarred as "." or not) or a root filesystem.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isContainerArchive } from '../../host-agent/src/image/sniff.js';

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
