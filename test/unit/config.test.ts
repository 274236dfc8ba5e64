import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig, parseSize, volumeSizeFor } from '../../host-agent/src/config.js';
import { UsageError } from '../../host-agent/src/errors.js';

test('sizes parse with binary units and reject junk', () => {
  assert.equal(parseSize('512M', 'x'), 512 * 1024 ** 2);
  assert.equal(parseSize('4GiB', 'x'), 4 * 1024 ** 3);
  assert.equal(parseSize('1048576', 'x'), 1048576);
  assert.throws(() => parseSize('lots', 'x'), UsageError);
});

test('flags beat THINRELAY_* variables, which beat defaults', () => {
  const env = { THINRELAY_STATE_DIR: '/env', THINRELAY_BUCKET: 'envb', THINRELAY_MAX_ENTRIES: '7' };
  const c = loadConfig({ stateDir: '/flag' }, env);
  assert.equal(c.stateDir, '/flag');
  assert.equal(c.bucket, 'envb');
  assert.equal(c.limits.maxEntries, 7);
  assert.equal(loadConfig({}, {}).stateDir, '/var/lib/thinrelay');
  assert.equal(loadConfig({}, {}).backend, 'loop');
  assert.throws(() => loadConfig({ backend: 'zfs' }, {}), /unknown backend "zfs"/);
  assert.throws(() => loadConfig({}, { THINRELAY_MAX_ENTRIES: 'many' }), /whole number/);
});

test('volume size leaves headroom over the blob and respects the unpacked limit', () => {
  const c = loadConfig({}, {});
  assert.equal(volumeSizeFor(10, c), 1024 ** 3);
  assert.ok(volumeSizeFor(1024 ** 3, c) >= 4 * 1024 ** 3);
  const small = loadConfig({}, { THINRELAY_MAX_UNPACKED_BYTES: '100M' });
  assert.ok(volumeSizeFor(1024 ** 3, small) <= 110 * 1024 ** 2 + 257 * 1024 ** 2);
  assert.equal(volumeSizeFor(5, loadConfig({}, { THINRELAY_VOLUME_SIZE: '2G' })), 2 * 1024 ** 3);
});

test('download part size and concurrency: defaults, THINRELAY_DOWNLOAD_*, bounds', () => {
  assert.deepEqual(loadConfig({}, {}).download, { partSizeBytes: 8 * 1024 ** 2, concurrency: 8 });
  const c = loadConfig(
    {},
    { THINRELAY_DOWNLOAD_PART_SIZE: '16M', THINRELAY_DOWNLOAD_CONCURRENCY: '16' },
  );
  assert.deepEqual(c.download, { partSizeBytes: 16 * 1024 ** 2, concurrency: 16 });
  assert.equal(loadConfig({}, { THINRELAY_DOWNLOAD_CONCURRENCY: '1' }).download.concurrency, 1);
  for (const env of [
    { THINRELAY_DOWNLOAD_PART_SIZE: '1K' },
    { THINRELAY_DOWNLOAD_PART_SIZE: '2G' },
    { THINRELAY_DOWNLOAD_PART_SIZE: 'big' },
    { THINRELAY_DOWNLOAD_CONCURRENCY: '0' },
    { THINRELAY_DOWNLOAD_CONCURRENCY: '65' },
    { THINRELAY_DOWNLOAD_CONCURRENCY: 'x' },
  ]) {
    assert.throws(() => loadConfig({}, env), UsageError, JSON.stringify(env));
  }
});
