/**
 * Pools thinrelay does not make from its own sparse files, end to end with the
 * bundled CLI on a real kernel: `pool create --devices` on two block devices
 * (loop devices standing in for disks), THINRELAY_DM_SKIP_BLOCK_ZEROING=1, and
 * an LVM thin pool (on loop devices, --errorwhenfull y) attached by name with
 * THINRELAY_DM_POOL — including the refusal when LVM changes the pool's
 * transaction id behind thinrelay's back. Also reconcile of dm devices in
 * thinrelay's namespace that map no object: they are removed.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { dmPrefixFor } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import {
  assertPoolMatchesStore,
  cliJson as json,
  type ProcessJson,
  devmapperEnv,
  dmDevices,
  dmHostInventory,
  freshStateDir,
  poolNameOf,
  poolThinIds,
  poolTransactionId,
  releaseDmStateDir,
  storeView,
} from './dm-host.js';
import { partDescribe } from './suite-parts.js';

/** Its top-level describes: run.sh may run them in different guests (suite-parts.ts). */
const describePart = partDescribe(import.meta.url);

const bucket = 'thinrelay-dm-sources';

const sh = (file: string, args: string[], env: NodeJS.ProcessEnv = {}): string =>
  execFileSync(file, args, {
    encoding: 'utf8',
    env: { ...process.env, LC_ALL: 'C', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

/** A "disk": a sparse file on a loop device, in a directory of its own (not the state dir). */
function disk(dir: string, name: string, size: string, firstBytes?: string): string {
  const file = join(dir, `${name}.img`);
  if (firstBytes !== undefined) writeFileSync(file, firstBytes);
  sh('truncate', ['-s', size, file]);
  return sh('losetup', ['--find', '--show', file]).trim();
}

function detachDisks(dir: string): void {
  const out = sh('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  for (const [dev, back] of out.split('\n').map((l) => l.trim().split(/\s+/)))
    if (dev !== undefined && back?.startsWith(dir + '/') === true) sh('losetup', ['-d', dev]);
  rmSync(dir, { recursive: true, force: true });
}

/** The pool table's fields: [start, len, 'thin-pool', meta, data, block, low water, n, features...]. */
function poolTable(pool: string): string[] {
  return sh('dmsetup', ['table', pool]).trim().split(/\s+/);
}

function devNumber(device: string): string {
  const rdev = statSync(device).rdev;
  return `${Math.floor(rdev / 256) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;
}

function osRelease(device: string): string {
  return withMounted(device, (root) => readFileSync(join(root, 'etc/os-release'), 'utf8'));
}

/** A reboot: every dm device of the state dir goes (the pool last); disks stay. */
function dropDmDevices(stateDir: string, pool: string): void {
  for (const d of dmHostInventory(stateDir).devices.filter((d) => d !== pool))
    sh('dmsetup', ['remove', d]);
  if (dmDevices(pool).includes(pool)) sh('dmsetup', ['remove', pool]);
  sh('dmsetup', ['mknodes']);
}

async function putImages(s3: S3Emulator, seeds: string[]): Promise<void> {
  await s3.createBucket(bucket);
  for (const seed of seeds)
    await s3.putObject(bucket, `images/${seed}.tar`, await buildSampleRootfs({ seed }));
}

describePart('pool create --devices: a pool on two block devices', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let disks: string;
  let env: NodeJS.ProcessEnv;
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);

  before(async () => {
    s3 = await startS3Emulator();
    await putImages(s3, ['disk-a', 'disk-b']);
    stateDir = freshStateDir('thinrelay-dm-disks-');
    disks = mkdtempSync(join(tmpdir(), 'thinrelay-disks-'));
    env = { ...s3EnvFor(s3), ...devmapperEnv(stateDir), THINRELAY_BUCKET: bucket };
  });
  after(async () => {
    releaseDmStateDir(stateDir);
    detachDisks(disks);
    await s3.stop();
  });

  test('refuses a metadata device that is not blank, and a single device; nothing is left', async () => {
    const data = disk(disks, 'spare-data', '256M');
    const used = disk(disks, 'used-meta', '16M', 'an old filesystem');
    const notBlank = await cli('pool', 'create', '--devices', `${data},${used}`);
    assert.equal(notBlank.code, 2, notBlank.stderr);
    assert.match(notBlank.stderr, /IN_USE/);
    assert.match(notBlank.stderr, /is not blank/);
    const one = await cli('pool', 'create', '--devices', data);
    assert.equal(one.code, 2, one.stderr);
    assert.match(one.stderr, /DATA,METADATA/);
    assert.deepEqual(dmDevices(dmPrefixFor(stateDir)), []);
    assert.equal(existsSync(join(stateDir, 'dm', 'pool.json')), false, 'no pool defined');
    sh('losetup', ['-d', data]);
    sh('losetup', ['-d', used]);
  });

  test('process-image end to end; the table maps the two disks; after a reboot the pool is loaded again', async () => {
    const data = disk(disks, 'data', '1G');
    const meta = disk(disks, 'meta', '32M');
    const created = json<{ healthy: boolean; dataTotalBytes: number; detail: string }>(
      await cli('pool', 'create', '--devices', `${data},${meta}`, '--json'),
    );
    assert.equal(created.healthy, true, created.detail);
    assert.equal(created.dataTotalBytes, 1024 ** 3);
    const pool = poolNameOf(stateDir);
    const table = poolTable(pool);
    assert.equal(table[2], 'thin-pool');
    assert.deepEqual([table[3], table[4]], [devNumber(meta), devNumber(data)]);
    assert.ok(table.includes('error_if_no_space'), table.join(' '));
    assert.ok(!table.includes('skip_block_zeroing'), 'blocks are zeroed unless asked otherwise');

    const a = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/disk-a.tar', '--json'),
    );
    assert.equal(a.outcome, 'complete');
    assert.match(osRelease(a.devicePath), /VERSION_ID="disk-a"/);
    assertPoolMatchesStore(stateDir);

    dropDmDevices(stateDir, pool);
    const b = await cli('process-image', '--s3-key', 'images/disk-b.tar', '--json');
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stderr, /reloaded/);
    assert.match(b.stderr, /reactivated/);
    assert.deepEqual(
      [poolTable(pool)[3], poolTable(pool)[4]],
      [devNumber(meta), devNumber(data)],
      'the same disks',
    );
    assert.match(osRelease(a.devicePath), /VERSION_ID="disk-a"/);
    assert.match(osRelease(json<ProcessJson>(b).devicePath), /VERSION_ID="disk-b"/);
    assertPoolMatchesStore(stateDir);
  });
});

describePart('THINRELAY_DM_SKIP_BLOCK_ZEROING=1', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let env: NodeJS.ProcessEnv;

  before(async () => {
    s3 = await startS3Emulator();
    await putImages(s3, ['nozero']);
    stateDir = freshStateDir('thinrelay-dm-nozero-');
    env = {
      ...s3EnvFor(s3),
      ...devmapperEnv(stateDir),
      THINRELAY_BUCKET: bucket,
      THINRELAY_DM_SKIP_BLOCK_ZEROING: '1',
    };
  });
  after(async () => {
    releaseDmStateDir(stateDir);
    await s3.stop();
  });

  test('the pool is loaded with skip_block_zeroing (also after a reboot), and images are whole', async () => {
    const created = await runCli(['pool', 'create', '--size', '1G'], env);
    assert.equal(created.code, 0, created.stderr);
    const pool = poolNameOf(stateDir);
    assert.ok(poolTable(pool).includes('skip_block_zeroing'), poolTable(pool).join(' '));
    assert.ok(poolTable(pool).includes('error_if_no_space'));
    const r = json<ProcessJson>(
      await runCli(['process-image', '--s3-key', 'images/nozero.tar', '--json'], env),
    );
    assert.match(osRelease(r.devicePath), /VERSION_ID="nozero"/);
    assertPoolMatchesStore(stateDir);
    // The feature is part of the pool's definition, not of the environment of each run.
    dropDmDevices(stateDir, pool);
    const again = await runCli(['process-image', '--s3-key', 'images/nozero.tar'], {
      ...env,
      THINRELAY_DM_SKIP_BLOCK_ZEROING: undefined,
    });
    assert.equal(again.code, 0, again.stderr);
    assert.ok(poolTable(pool).includes('skip_block_zeroing'), 'reloaded with the same table');
    assertPoolMatchesStore(stateDir);
  });
});

describePart(
  'reconcile: dm devices in our namespace that map no object',
  { skip: needsRoot },
  () => {
    let s3: S3Emulator;
    let stateDir: string;
    let env: NodeJS.ProcessEnv;
    let foreignFiles: string;
    const foreignPool = `thinrelay-test-other-${process.pid}`;

    before(async () => {
      s3 = await startS3Emulator();
      await putImages(s3, ['strays']);
      stateDir = freshStateDir('thinrelay-dm-strays-');
      foreignFiles = mkdtempSync(join(tmpdir(), 'thinrelay-otherpool-'));
      env = { ...s3EnvFor(s3), ...devmapperEnv(stateDir), THINRELAY_BUCKET: bucket };
      assert.equal((await runCli(['pool', 'create', '--size', '1G'], env)).code, 0);
    });
    after(async () => {
      releaseDmStateDir(stateDir);
      if (dmDevices(foreignPool).includes(foreignPool))
        sh('dmsetup', ['remove', '-f', foreignPool]);
      detachDisks(foreignFiles);
      await s3.stop();
    });

    test('removed by the next start (gc), with a reason; objects and other pools untouched', async () => {
      const r = json<ProcessJson>(
        await runCli(['process-image', '--s3-key', 'images/strays.tar', '--json'], env),
      );
      const prefix = dmPrefixFor(stateDir);
      const pool = poolNameOf(stateDir);
      const snapTable = sh('dmsetup', ['table', r.devicePath.replace('/dev/mapper/', '')]).trim();
      const [, , , poolDev, thinId] = snapTable.split(/\s+/);
      // A name that is no object's, mapping a thin device of our pool (left by hand or by an old version).
      sh('dmsetup', ['create', `${prefix}leftover`, '--table', `0 2048 thin ${poolDev} ${thinId}`]);
      // An object's name, but mapping a thin device of another pool (e.g. one since re-created).
      const m = disk(foreignFiles, 'm', '8M');
      const d = disk(foreignFiles, 'd', '64M');
      sh('dmsetup', ['create', foreignPool, '--table', `0 131072 thin-pool ${m} ${d} 256 256 0`]);
      sh('dmsetup', ['message', foreignPool, '0', 'create_thin 7']);
      sh('dmsetup', [
        'create',
        `${prefix}snap-00000099`,
        '--table',
        `0 2048 thin ${devNumber(`/dev/mapper/${foreignPool}`)} 7`,
      ]);
      sh('dmsetup', ['mknodes']);
      const tid = poolTransactionId(pool);

      const gc = await runCli(['gc', '--json'], env);
      assert.equal(gc.code, 0, gc.stderr);
      assert.match(gc.stderr, /leftover.*"action":"removed".*maps no object/);
      assert.match(gc.stderr, /snap-00000099.*"action":"removed".*maps another pool/);
      assert.doesNotMatch(gc.stderr, /left alone/);
      assert.deepEqual(
        dmDevices(prefix).filter((n) => n !== pool),
        storeView(stateDir).activeDevices,
        'only the real snapshot is left',
      );
      assert.equal(existsSync(`/dev/mapper/${prefix}leftover`), false, 'its node is gone too');
      assert.match(osRelease(r.devicePath), /VERSION_ID="strays"/);
      assert.equal(poolTransactionId(pool), tid, 'removing a device changes nothing in the pool');
      assert.deepEqual(poolThinIds(foreignPool), [7], "the other pool's thin device is untouched");
      assertPoolMatchesStore(stateDir);
    });
  },
);

/**
 * LVM in the guest: no udev, no lvmetad or dmeventd, the read-only host root
 * for /etc — so a config of our own (LVM_SYSTEM_DIR) that scans only /dev/loop*.
 */
function lvmConfig(dir: string): NodeJS.ProcessEnv {
  writeFileSync(
    join(dir, 'lvm.conf'),
    `devices {
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  use_devicesfile = 0
  filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ]
}
activation {
  udev_sync = 0
  udev_rules = 0
  verify_udev_operations = 1
  monitoring = 0
}
global {
  use_lvmpolld = 0
  locking_dir = "${dir}/lock"
}
backup {
  backup = 0
  archive = 0
}
`,
  );
  return { LVM_SYSTEM_DIR: dir, LVM_SUPPRESS_FD_WARNINGS: '1' };
}

describePart('an LVM thin pool attached by name (THINRELAY_DM_POOL)', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let lvmDir: string;
  let lvmEnv: NodeJS.ProcessEnv;
  let env: NodeJS.ProcessEnv;
  let pool: string;
  let lvmTid = 0;
  const vg = `thinrelay${process.pid}`;
  const lvm = (...args: string[]): string => sh('lvm', args, lvmEnv);
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);

  before(async () => {
    s3 = await startS3Emulator();
    await putImages(s3, ['lvm-a', 'lvm-b', 'lvm-c']);
    stateDir = freshStateDir('thinrelay-dm-lvm-');
    lvmDir = mkdtempSync(join(tmpdir(), 'thinrelay-lvm-'));
    lvmEnv = lvmConfig(lvmDir);
    const pvs = [disk(lvmDir, 'pv1', '640M'), disk(lvmDir, 'pv2', '640M')];
    lvm('pvcreate', '-q', ...pvs);
    lvm('vgcreate', '-q', vg, ...pvs);
    // As an operator would make it (docs/devmapper.md): 128 KiB chunks, then fail writes when full
    // (lvcreate refuses --errorwhenfull for thin pools; lvchange sets it).
    lvm(
      'lvcreate',
      '-q',
      '--type',
      'thin-pool',
      '-L',
      '1G',
      '--poolmetadatasize',
      '16M',
      '--chunksize',
      '128k',
      '-n',
      'pool',
      vg,
    );
    lvm('lvchange', '-q', '--errorwhenfull', 'y', `${vg}/pool`);
    // A thin volume LVM made and removed, as in a pool that was used before: the pool is now
    // layered (its thin-pool device is <vg>-pool-tpool, as docs/devmapper.md's THINRELAY_DM_POOL shows),
    // so LVM can add thin volumes later while thinrelay's snapshots hold the pool open.
    lvm('lvcreate', '-q', '-V', '64M', '-T', `${vg}/pool`, '-n', 'warmup');
    lvm('lvremove', '-q', '-y', `${vg}/warmup`);
    // LVM's thin-pool device is <vg>-pool-tpool when the pool LV is a layer, <vg>-pool otherwise.
    const pools = sh('dmsetup', ['table', '--target', 'thin-pool'])
      .split('\n')
      .map((l) => l.split(':')[0]!)
      .filter((n) => n.startsWith(`${vg}-`));
    assert.equal(pools.length, 1, `one thin-pool device of ${vg}: ${pools.join(', ')}`);
    pool = pools[0]!;
    env = {
      ...s3EnvFor(s3),
      ...devmapperEnv(stateDir),
      THINRELAY_BUCKET: bucket,
      THINRELAY_DM_POOL: pool,
    };
  });
  after(async () => {
    // thinrelay's devices first (the pool cannot go while they are open), then LVM's, then the
    // disks; every step is tried, the first failure reported.
    const errors: unknown[] = [];
    const attempt = (fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        errors.push(err);
      }
    };
    attempt(() => releaseDmStateDir(stateDir));
    attempt(() => lvm('vgremove', '-q', '-ff', '-y', vg));
    // Whatever LVM left: users before the devices they sit on (thin LVs, pool, then _tdata/_tmeta).
    const rank = (n: string): number => (/_t(data|meta)$/.test(n) ? 2 : /-tpool$/.test(n) ? 1 : 0);
    for (const d of dmDevices(`${vg}-`).sort((a, b) => rank(a) - rank(b)))
      attempt(() => sh('dmsetup', ['remove', '-f', d]));
    attempt(() => detachDisks(lvmDir));
    await s3.stop();
    if (errors.length > 0) throw errors[0];
  });

  test("the pool is LVM's, with --errorwhenfull y: error_if_no_space in its table", () => {
    assert.equal(poolTable(pool)[2], 'thin-pool');
    assert.ok(poolTable(pool).includes('error_if_no_space'), poolTable(pool).join(' '));
    lvmTid = poolTransactionId(pool);
    assert.ok(lvmTid > 0, "LVM's own create and delete moved the transaction id");
    assert.match(pool, new RegExp(`^${vg}-pool-tpool$`));
  });

  test('process-image end to end, a removal and another image; LVM keeps its pool', async () => {
    const a = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/lvm-a.tar', '--json'),
    );
    assert.equal(a.outcome, 'complete');
    assert.match(a.devicePath, /^\/dev\/mapper\/thinrelay-[0-9a-f]{8}-snap-\d{8}$/);
    assert.match(osRelease(a.devicePath), /VERSION_ID="lvm-a"/);
    assertPoolMatchesStore(stateDir, pool);
    const status = json<{ healthy: boolean; location: string; detail: string }>(
      await cli('pool', 'status', '--json'),
    );
    assert.equal(status.healthy, true, status.detail);
    assert.equal(status.location, pool);
    // A removed image frees its thin ids; they are never reused (LVM will take the low ones below).
    assert.equal((await cli('remove', String(a.imageId), '--force')).code, 0);
    const b = json<ProcessJson>(
      await cli('process-image', '--s3-key', 'images/lvm-b.tar', '--json'),
    );
    assert.match(osRelease(b.devicePath), /VERSION_ID="lvm-b"/);
    assertPoolMatchesStore(stateDir, pool);
    assert.ok(!poolThinIds(pool).includes(1), 'thin id 1 was freed');
    // LVM still sees its pool as it left it, with no thin volumes.
    assert.match(lvm('lvs', '--noheadings', '-o', 'lv_name,lv_attr', vg), /pool\s+twi-a/);
    assert.doesNotMatch(
      lvm('lvs', '--noheadings', '-o', 'segtype', vg),
      /^\s*thin\s*$/m,
      'no thin LVs',
    );
    // thinrelay refuses to destroy what it did not create.
    const destroy = await cli('pool', 'destroy');
    assert.notEqual(destroy.code, 0);
    assert.match(destroy.stderr, /not created by thinrelay/);
  });

  test('LVM refuses a pool thinrelay moved on; once LVM changes the transaction id, thinrelay refuses and changes nothing', async () => {
    const tid = poolTransactionId(pool);
    assert.ok(tid > 0);
    // LVM's metadata still has its own last id: it will not touch a pool that moved on without it.
    const refused = spawnSync(
      'lvm',
      ['lvcreate', '-q', '-V', '64M', '-T', `${vg}/pool`, '-n', 'intruder'],
      { encoding: 'utf8', env: { ...process.env, ...lvmEnv } },
    );
    assert.notEqual(refused.status, 0, 'LVM refuses');
    // Its wording depends on the pool's layout; either way it names both ids.
    assert.match(
      refused.stderr,
      new RegExp(
        `unexpected transaction id ${tid}, expecting ${lvmTid}\\.|with transaction id ${tid} for thin volumes\\. Expected transaction id ${lvmTid}\\.`,
      ),
    );
    assert.equal(poolTransactionId(pool), tid, "LVM's refusal changed nothing");

    // An operator "fixes" LVM's view and creates a thin volume behind thinrelay's back.
    const backup = join(lvmDir, 'vg.backup');
    lvm('vgcfgbackup', '-q', '-f', backup, vg);
    writeFileSync(
      backup,
      readFileSync(backup, 'utf8').replace(
        new RegExp(`transaction_id = ${lvmTid}\\b`),
        `transaction_id = ${tid}`,
      ),
    );
    lvm('vgcfgrestore', '-q', '--force', '--yes', '-f', backup, vg);
    lvm('lvcreate', '-q', '-V', '64M', '-T', `${vg}/pool`, '-n', 'intruder');
    assert.equal(poolTransactionId(pool), tid + 1, 'LVM committed its change');
    const lvmIds = poolThinIds(pool);
    const before = storeView(stateDir, pool);

    const c = await cli('process-image', '--s3-key', 'images/lvm-c.tar', '--json');
    assert.equal(c.code, 3, c.stderr);
    assert.match(c.stderr, /POOL_UNAVAILABLE/);
    assert.match(c.stderr, /changed by something else/);
    const gc = await cli('gc');
    assert.equal(gc.code, 3, 'gc refuses too: it would delete the thin volume LVM made');
    assert.equal(poolTransactionId(pool), tid + 1, 'thinrelay changed nothing');
    assert.deepEqual(poolThinIds(pool), lvmIds, "LVM's thin volume is still there");
    assert.deepEqual(storeView(stateDir, pool), before, "the store's view is unchanged");
    assert.match(
      lvm('lvs', '--noheadings', '-o', 'lv_name', vg),
      /intruder/,
      "LVM's volume is usable",
    );
  });
});
