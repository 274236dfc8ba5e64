/**
 * process-image on the devmapper backend, end to end, as an operator runs it
 * (the bundled CLI, s3rver, a real kernel's thin pool): the activated
 * snapshot holds exactly what GNU tar extracts from the same archive; reruns
 * are no-ops; concurrent runs; a reboot; a pool too small. After every test
 * the pool's thin ids equal the store's and no dm device is active that the
 * store does not list.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { gzip, packTar } from '../helpers/tar-fixtures.js';
import { compareTrees } from '../helpers/tree-compare.js';
import {
  assertPoolMatchesStore,
  cliJson as json,
  type ProcessJson,
  devmapperEnv,
  dmHostInventory,
  freshStateDir,
  poolNameOf,
  poolThinIds,
  poolTransactionId,
  releaseDmStateDir,
  storeView,
  withMountedAsync,
} from './dm-host.js';
import { partDescribe } from './suite-parts.js';

/** Its top-level describes: run.sh may run them in different guests (suite-parts.ts). */
const describePart = partDescribe(import.meta.url);

const bucket = 'thinrelay-dm';

describePart('process-image on devmapper', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const archives = new Map<string, Buffer>();
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);
  const scratch = mkdtempSync(join(tmpdir(), 'thinrelay-dm-gnu-'));

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    archives.set('images/sample.tar', await buildSampleRootfs({ payloadBytes: 4 * 1024 ** 2 }));
    for (const n of ['a', 'b', 'c'])
      archives.set(`images/con-${n}.tar.gz`, await buildSampleRootfs({ gzip: true, seed: n }));
    for (const [key, body] of archives) await s3.putObject(bucket, key, body);
    stateDir = freshStateDir('thinrelay-dm-e2e-');
    env = { ...s3EnvFor(s3), ...devmapperEnv(stateDir), THINRELAY_BUCKET: bucket };
    const created = json<{ exists: boolean; healthy: boolean }>(
      await cli('pool', 'create', '--size', '2G', '--json'),
    );
    assert.equal(created.healthy, true);
  });
  after(async () => {
    releaseDmStateDir(stateDir);
    rmSync(scratch, { recursive: true, force: true });
    await s3.stop();
  });

  test("the activated snapshot's tree equals GNU tar's extraction of the same archive", async () => {
    const r = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    assert.equal(r.outcome, 'complete');
    assert.match(r.devicePath, /^\/dev\/mapper\/thinrelay-[0-9a-f]{8}-snap-\d{8}$/);
    const gnu = join(scratch, 'sample');
    mkdirSync(gnu);
    execFileSync(
      'tar',
      ['--numeric-owner', '--xattrs', '--delay-directory-restore', '-xpf', '-', '-C', gnu],
      {
        input: archives.get('images/sample.tar'),
        env: { ...process.env, LC_ALL: 'C' },
      },
    );
    const diffs = await withMountedAsync(r.devicePath, (root) =>
      compareTrees(gnu, root, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      }),
    );
    assert.deepEqual(diffs, [], `trees differ:\n${diffs.join('\n')}`);
    const dev = execFileSync(
      'sqlite3',
      [join(stateDir, 'images.db'), 'SELECT device_path FROM snapshots LIMIT 1'],
      { encoding: 'utf8' },
    ).trim();
    assert.equal(dev, r.devicePath);
    assertPoolMatchesStore(stateDir);
  });

  test('a rerun is a no-op that reports the same device', async () => {
    const first = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    const t0 = poolTransactionId(poolNameOf(stateDir));
    const again = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/sample.tar', '--json'),
    );
    assert.equal(again.outcome, 'already-complete');
    assert.equal(again.devicePath, first.devicePath);
    assert.equal(poolTransactionId(poolNameOf(stateDir)), t0, 'nothing changed in the pool');
    assertPoolMatchesStore(stateDir);
  });

  test('three concurrent runs each get their own snapshot; the pool is never corrupted', async () => {
    const keys = ['images/con-a.tar.gz', 'images/con-b.tar.gz', 'images/con-c.tar.gz'];
    const results = await Promise.all(
      keys.map((k) => cli('process-image', '--s3-key', k, '--json')),
    );
    const devices = results.map((r) => json<ProcessJson>(r).devicePath);
    assert.equal(new Set(devices).size, 3);
    for (const [i, d] of devices.entries())
      withMounted(d, (root) =>
        assert.match(
          execFileSync('cat', [join(root, 'etc/os-release')], { encoding: 'utf8' }),
          new RegExp(`VERSION_ID="${['a', 'b', 'c'][i]}"`),
        ),
      );
    assertPoolMatchesStore(stateDir);
  });

  test('pool status reads data and metadata usage; doctor passes', async () => {
    const s = json<{
      exists: boolean;
      healthy: boolean;
      dataTotalBytes: number;
      dataUsedBytes: number;
      metadataTotalBytes: number;
      metadataUsedBytes: number;
      detail: string;
    }>(await cli('pool', 'status', '--json'));
    assert.equal(s.exists, true);
    assert.equal(s.healthy, true, s.detail);
    assert.equal(s.dataTotalBytes, 2 * 1024 ** 3);
    assert.ok(s.dataUsedBytes > 0 && s.dataUsedBytes < s.dataTotalBytes);
    assert.ok(s.metadataUsedBytes > 0 && s.metadataUsedBytes < s.metadataTotalBytes);
    const text = await cli('pool', 'status');
    assert.match(text.stdout, /metadata\s+.* used of /);
    const doctor = await cli('doctor', '--json');
    const checks = (
      JSON.parse(doctor.stdout) as { checks: { name: string; ok: boolean; detail: string }[] }
    ).checks;
    assert.equal(doctor.code, 0, JSON.stringify(checks.filter((c) => !c.ok)));
    for (const name of [
      'device-mapper',
      'dm_thin_pool',
      'thin_dump',
      'thin pool',
      'pool data space',
    ])
      assert.ok(
        checks.some((c) => c.name === name && c.ok),
        `doctor checks ${name}`,
      );
  });

  test('after a simulated reboot (every dm device and loop gone, files kept), a restart brings every snapshot back', async () => {
    const before = storeView(stateDir).activeDevices;
    assert.equal(before.length, 4);
    const pool = poolNameOf(stateDir);
    for (const d of dmHostInventory(stateDir).devices.filter((d) => d !== pool))
      execFileSync('dmsetup', ['remove', d]);
    execFileSync('dmsetup', ['remove', pool]);
    for (const l of dmHostInventory(stateDir).loops) execFileSync('losetup', ['-d', l]);
    execFileSync('dmsetup', ['mknodes']);
    assert.deepEqual(dmHostInventory(stateDir), { devices: [], loops: [], mounts: [] });

    const again = await cli('process-image', '--s3-key', 'images/sample.tar', '--json');
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /reloaded/);
    assert.match(again.stderr, /reactivated/);
    assert.deepEqual(storeView(stateDir).activeDevices, before);
    for (const d of before)
      withMounted(`/dev/mapper/${d}`, (root) =>
        assert.ok(
          execFileSync('ls', [join(root, 'etc')], { encoding: 'utf8' }).includes('os-release'),
        ),
      );
    assertPoolMatchesStore(stateDir);
  });
});

describePart('a pool too small for the image', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    await s3.putObject(
      bucket,
      'big.tar',
      // Larger than the pool: an uncompressed tar unpacks to about its own size.
      await buildSampleRootfs({ payloadBytes: 64 * 1024 ** 2, seed: 'big' }),
    );
    // 96 MiB of zeros gzip to ~100 KiB: the space check passes, the writes fill the pool.
    await s3.putObject(
      bucket,
      'zeros.tar.gz',
      gzip(await packTar([{ name: 'zeros.bin', content: Buffer.alloc(96 * 1024 ** 2) }])),
    );
    await s3.putObject(bucket, 'small.tar', await buildSampleRootfs({ seed: 'small' }));
    stateDir = freshStateDir('thinrelay-dm-small-');
    env = {
      ...s3EnvFor(s3),
      ...devmapperEnv(stateDir),
      THINRELAY_BUCKET: bucket,
      THINRELAY_VOLUME_SIZE: '256M',
    };
    assert.equal((await cli('pool', 'create', '--size', '48M')).code, 0);
  });
  after(async () => {
    releaseDmStateDir(stateDir);
    await s3.stop();
  });

  test('refused up front by the space check: a clear error, nothing leaked', async () => {
    const r = await cli('process-image', '--s3-key', 'big.tar');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /LOW_SPACE/);
    assertPoolMatchesStore(stateDir);
    assert.deepEqual(poolThinIds(poolNameOf(stateDir)), []);
  });

  test('the pool fills during the unpack: fails cleanly, everything released, the pool still usable', async () => {
    const r = await cli('process-image', '--s3-key', 'zeros.tar.gz');
    assert.notEqual(r.code, 0, 'a full pool must fail the image');
    assert.match(r.stderr, /LOW_SPACE.*ran out of data space/);
    assert.doesNotMatch(r.stderr, /could not release/);
    assertPoolMatchesStore(stateDir);
    assert.deepEqual(poolThinIds(poolNameOf(stateDir)), []);
    const status = JSON.parse((await cli('pool', 'status', '--json')).stdout) as {
      healthy: boolean;
      detail: string;
    };
    assert.equal(status.healthy, true, status.detail);
    const ok = await cli('process-image', '--s3-key', 'small.tar', '--json');
    assert.equal(ok.code, 0, ok.stderr);
    assertPoolMatchesStore(stateDir);
  });
});
