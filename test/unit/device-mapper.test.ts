/**
 * dmsetup argument validation and output parsing: runs anywhere (no
 * device-mapper needed). Validation happens before any process is spawned,
 * so a bad name can never reach the tool.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  EnvironmentError,
  ExitCode,
  InternalError,
  UsageError,
  type ThinrelayError,
} from '../../host-agent/src/errors.js';
import {
  checkDmName,
  checkThinId,
  dmCreate,
  dmPoolMessage,
  dmRemove,
  parseThinPoolStatus,
  parseThinPoolTable,
  parseThinTable,
  poolMessageText,
  thinPoolTable,
  thinTable,
} from '../../host-agent/src/storage/devmapper/device-mapper.js';
import {
  definitionPath,
  metadataBytesFor,
  readDefinition,
} from '../../host-agent/src/storage/devmapper/pool-setup.js';
import { parseThinDump } from '../../host-agent/src/storage/devmapper/thin-metadata.js';
import { loadConfig } from '../../host-agent/src/config.js';

describe('dmsetup arguments are validated before anything runs', () => {
  test('device names: a fixed alphabet, 1..127 characters', () => {
    assert.equal(
      checkDmName('thinrelay-0a1b2c3d-snap-00000001'),
      'thinrelay-0a1b2c3d-snap-00000001',
    );
    for (const bad of [
      '',
      'a b',
      '../x',
      'x/y',
      'x;rm -rf /',
      '-',
      'é',
      'a'.repeat(128),
      '.',
      '..',
      'a\nb',
    ])
      assert.throws(() => checkDmName(bad), /invalid device-mapper name/, bad);
  });

  test('thin ids: integers 0..2^24-1', () => {
    assert.equal(checkThinId(0), 0);
    assert.equal(checkThinId(2 ** 24 - 1), 2 ** 24 - 1);
    for (const bad of [-1, 2 ** 24, 1.5, Number.NaN, Infinity])
      assert.throws(() => checkThinId(bad), /invalid thin device id/);
  });

  test('commands reject bad arguments without spawning dmsetup', async () => {
    await assert.rejects(dmCreate('bad name', '0 8 zero'), /invalid device-mapper name/);
    await assert.rejects(dmRemove('../../dev/sda'), /invalid device-mapper name/);
    await assert.rejects(
      dmPoolMessage('pool', { op: 'delete', thinId: 2 ** 24 }),
      /invalid thin device id/,
    );
    await assert.rejects(
      dmPoolMessage('pool; reboot', { op: 'create_thin', thinId: 1 }),
      /invalid device-mapper name/,
    );
  });

  test('pool messages and tables are built from numbers', () => {
    assert.equal(poolMessageText({ op: 'create_snap', thinId: 5, originId: 2 }), 'create_snap 5 2');
    assert.equal(
      poolMessageText({ op: 'set_transaction_id', from: 7, to: 8 }),
      'set_transaction_id 7 8',
    );
    assert.throws(() => poolMessageText({ op: 'set_transaction_id', from: -1, to: 0 }));
    assert.equal(
      thinPoolTable({
        sectors: 2097152,
        metadata: { major: 7, minor: 0 },
        data: { major: 7, minor: 1 },
        blockSectors: 256,
        lowWaterBlocks: 256,
        features: ['error_if_no_space', 'skip_block_zeroing'],
      }),
      '0 2097152 thin-pool 7:0 7:1 256 256 2 error_if_no_space skip_block_zeroing',
    );
    assert.throws(() =>
      thinPoolTable({
        sectors: 8,
        metadata: { major: 7, minor: 0 },
        data: { major: 7, minor: 1 },
        blockSectors: 100,
        lowWaterBlocks: 1,
        features: [],
      }),
    );
    assert.throws(() =>
      thinPoolTable({
        sectors: 8,
        metadata: { major: 7, minor: 0 },
        data: { major: 7, minor: 1 },
        blockSectors: 256,
        lowWaterBlocks: 1,
        features: ['queue_if_no_space; x'],
      }),
    );
    assert.equal(
      thinTable({ sectors: 2048, pool: { major: 254, minor: 0 }, thinId: 3 }),
      '0 2048 thin 254:0 3',
    );
  });
});

describe('dmsetup output parsing', () => {
  test('thin-pool status (as printed by a 6.1 kernel)', () => {
    const s = parseThinPoolStatus(
      '0 131072 thin-pool 4 213/2048 17/512 - rw discard_passdown error_if_no_space - 512 ',
    );
    assert.deepEqual(s, {
      transactionId: 4,
      usedMetadataBlocks: 213,
      totalMetadataBlocks: 2048,
      usedDataBlocks: 17,
      totalDataBlocks: 512,
      mode: 'rw',
      needsCheck: false,
      errorIfNoSpace: true,
      failed: false,
    });
    const full = parseThinPoolStatus(
      '0 131072 thin-pool 9 300/2048 512/512 - out_of_data_space discard_passdown error_if_no_space needs_check 512',
    );
    assert.equal(full.mode, 'out_of_data_space');
    assert.equal(full.needsCheck, true);
    assert.equal(parseThinPoolStatus('0 131072 thin-pool Fail').failed, true);
    assert.throws(() => parseThinPoolStatus('0 2048 linear 7:0 0'));
  });

  test('thin-pool and thin tables', () => {
    assert.deepEqual(
      parseThinPoolTable('0 131072 thin-pool 7:0 7:1 256 256 1 error_if_no_space '),
      {
        sectors: 131072,
        metadata: { major: 7, minor: 0 },
        data: { major: 7, minor: 1 },
        blockSectors: 256,
        lowWaterBlocks: 256,
        features: ['error_if_no_space'],
      },
    );
  });

  test('a thin table, and anything else', () => {
    assert.deepEqual(parseThinTable('0 2048 thin 254:0 1\n'), {
      sectors: 2048,
      pool: { major: 254, minor: 0 },
      thinId: 1,
    });
    assert.deepEqual(parseThinTable('0 8 thin 254:3 16777215 254:9'), {
      sectors: 8,
      pool: { major: 254, minor: 3 },
      thinId: 16777215,
    });
    assert.equal(parseThinTable('0 8 linear 7:0 0'), null);
    assert.equal(parseThinTable('0 8 thin 254:3 1\n8 8 thin 254:3 2'), null);
  });

  test('thin_dump --skip-mappings', () => {
    const xml = `<superblock uuid="" time="1" transaction="6" flags="0" version="2" data_block_size="256" nr_data_blocks="0">
  <device dev_id="12" mapped_blocks="0" transaction="5" creation_time="1" snap_time="1">
  </device>
  <device dev_id="3" mapped_blocks="4" transaction="1" creation_time="0" snap_time="1">
  </device>
</superblock>`;
    assert.deepEqual(parseThinDump(xml), {
      transactionId: 6,
      thinIds: [3, 12],
      blockSectors: 256,
      mappedBlocks: new Map([
        [12, 0],
        [3, 4],
      ]),
    });
    assert.throws(() => parseThinDump('garbage'));
  });

  test('metadata sizing and configuration defaults', () => {
    assert.equal(metadataBytesFor(64 * 1024 ** 2, 256), 8 * 1024 ** 2);
    assert.equal(metadataBytesFor(1024 ** 4, 256), 1024 ** 3);
    const c = loadConfig({}, {});
    assert.deepEqual(c.dm, {
      pool: null,
      blockSectors: 256,
      lowWaterSectors: 65536,
      skipBlockZeroing: false,
      minFreeData: { percent: 10 },
      minFreeMetadata: { percent: 10 },
    });
    const d = loadConfig(
      {},
      {
        THINRELAY_DM_POOL: 'vg0-thinpool-tpool',
        THINRELAY_POOL_MIN_FREE_DATA: '2G',
        THINRELAY_DM_SKIP_BLOCK_ZEROING: '1',
      },
    );
    assert.equal(d.dm.pool, 'vg0-thinpool-tpool');
    assert.deepEqual(d.dm.minFreeData, { bytes: 2 * 1024 ** 3 });
    assert.equal(d.dm.skipBlockZeroing, true);
    assert.throws(() => loadConfig({}, { THINRELAY_DM_BLOCK_SECTORS: '100' }), /multiple of 128/);
    assert.throws(() => loadConfig({}, { THINRELAY_POOL_MIN_FREE_DATA: '120%' }), /at most 100%/);
  });
});

describe("a device-mapper failure says whose it is: a bug, the host's or the configuration's", () => {
  const coded =
    (type: new (...a: never[]) => ThinrelayError, code: string, exitCode: number) =>
    (err: unknown): boolean =>
      err instanceof type && err.code === code && err.exitCode === exitCode;
  const bug = coded(InternalError, 'INTERNAL', ExitCode.internal);
  const hostFault = (code: string) => coded(EnvironmentError, code, ExitCode.environment);

  test('a bad name, id or table argument can only be a bug: INTERNAL', async () => {
    assert.throws(() => checkDmName('a b'), bug);
    assert.throws(() => checkThinId(2 ** 24), bug);
    await assert.rejects(dmRemove('../../dev/sda'), bug);
    assert.throws(
      () =>
        thinPoolTable({
          sectors: 8,
          metadata: { major: 7, minor: 0 },
          data: { major: 7, minor: 1 },
          blockSectors: 256,
          lowWaterBlocks: 1,
          features: ['queue_if_no_space'],
        }),
      bug,
    );
  });

  test('output dmsetup or thin_dump should not give is the host: TOOL_OUTPUT; a device that is not a thin pool: POOL_UNAVAILABLE', () => {
    assert.throws(() => parseThinPoolStatus('0 2048 linear 7:0 0'), hostFault('POOL_UNAVAILABLE'));
    assert.throws(
      () => parseThinPoolTable('0 2048 linear 7:0 0'),
      (err: unknown) =>
        hostFault('POOL_UNAVAILABLE')(err) &&
        /THINRELAY_DM_POOL/.test((err as ThinrelayError).hint ?? ''),
    );
    assert.throws(
      () => parseThinPoolStatus('0 131072 thin-pool 4 213-2048 17/512 - rw'),
      hostFault('TOOL_OUTPUT'),
    );
    assert.throws(
      () => parseThinPoolTable('0 131072 thin-pool 7-0 7:1 256 256 0'),
      hostFault('TOOL_OUTPUT'),
    );
    assert.throws(() => parseThinDump('garbage'), hostFault('TOOL_OUTPUT'));
  });

  test('THINRELAY_DM_POOL that is no device-mapper name is a configuration error (exit 2), before any dmsetup', () => {
    for (const bad of ['-f', 'vg0 thinpool', '../mapper/x', '..'])
      assert.throws(
        () => loadConfig({}, { THINRELAY_DM_POOL: bad }),
        (err: unknown) =>
          coded(UsageError, 'CONFIG', ExitCode.usage)(err) &&
          (err as Error).message.includes('THINRELAY_DM_POOL'),
        bad,
      );
    assert.equal(
      loadConfig({}, { THINRELAY_DM_POOL: 'vg0-thin.pool+1_x' }).dm.pool,
      'vg0-thin.pool+1_x',
    );
  });

  test('a pool.json that is not one thinrelay wrote is the host: POOL_UNAVAILABLE naming the file, not a crash', (t) => {
    const dmDir = mkdtempSync(join(tmpdir(), 'thinrelay-pooldef-'));
    t.after(() => rmSync(dmDir, { recursive: true, force: true }));
    const good = {
      version: 1,
      name: 'thinrelay-0a1b2c3d-pool',
      source: { kind: 'files', data: '/x/data', metadata: '/x/meta' },
      dataSectors: 2048,
      blockSectors: 256,
      lowWaterBlocks: 1,
      features: ['error_if_no_space'],
    };
    writeFileSync(definitionPath(dmDir), JSON.stringify(good));
    assert.deepEqual(readDefinition(dmDir), good);
    for (const [text, problem] of [
      ['{"name": "thinrelay-0a1b', /Unexpected end of JSON|JSON/],
      ['null', /not a JSON object/],
      [JSON.stringify({ ...good, name: '-x' }), /no valid pool name/],
      [JSON.stringify({ ...good, blockSectors: 100 }), /block size 100/],
      [JSON.stringify({ ...good, features: ['queue_if_no_space'] }), /unknown pool features/],
    ] as const) {
      writeFileSync(definitionPath(dmDir), text);
      assert.throws(
        () => readDefinition(dmDir),
        (err: unknown) =>
          hostFault('POOL_UNAVAILABLE')(err) &&
          (err as Error).message.includes(definitionPath(dmDir)) &&
          problem.test((err as Error).message),
        text,
      );
    }
  });
});
