import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sharesExtents, unionLength } from '../../host-agent/src/sys/extents.js';

test('unionLength counts overlapping, nested and repeated ranges once', () => {
  assert.equal(unionLength([]), 0);
  assert.equal(
    unionLength([
      [100, 200],
      [0, 50],
      [150, 250],
      [160, 170],
      [0, 50],
      [250, 300],
    ]),
    50 + 200,
  );
  assert.equal(
    unionLength([
      [10, 20],
      [30, 40],
    ]),
    20,
  );
});

test('sharesExtents: xfs and btrfs share, ext4 and tmpfs do not', () => {
  assert.equal(sharesExtents(0x58465342), true);
  assert.equal(sharesExtents(0x9123683e), true);
  assert.equal(sharesExtents(0xef53), false);
  assert.equal(sharesExtents(0x01021994), false);
});
