/**
 * The test VM's kernel really does thin provisioning: a pool on two loop
 * devices, a thin volume with ext4 on it, a snapshot of the mounted origin
 * (suspend, create_snap, resume) that keeps the old content, and thin_ls
 * reading the live pool's ids through a metadata snapshot. Runs only inside
 * `npm run test:dm` (scripts/test-dm/run.sh). The guest has no udev, so
 * nodes come from `dmsetup mknodes`. Everything is torn down by the test
 * itself (and asserted gone); after() releases whatever a failure left.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const sectorBytes = 512;
const blockSectors = 256; // 128 KiB pool blocks
const metaBytes = 16 * 1024 ** 2;
const dataBytes = 512 * 1024 ** 2;
const thinBytes = 1024 ** 3; // virtual: larger than the pool, as thin volumes are
const lowWaterBlocks = 64;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function dmNames(): string[] {
  const out = sh('dmsetup', ['ls']).trim();
  if (out === 'No devices found') return [];
  return out
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(/\s+/)[0]!);
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' ')[4]!)
    .filter((m) => m.startsWith(dir + '/'));
}

function loopsBackedBy(dir: string): string[] {
  const out = sh('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([, back]) => back?.startsWith(dir + '/'))
    .map(([dev]) => dev!);
}

interface Leftovers {
  mounts: string[];
  dmDevices: string[];
  mapperNodes: string[];
  loops: string[];
}

function leftovers(dir: string, prefix: string): Leftovers {
  return {
    mounts: mountsUnder(dir),
    dmDevices: dmNames().filter((n) => n.startsWith(prefix)),
    mapperNodes: existsSync('/dev/mapper')
      ? sh('ls', ['/dev/mapper'])
          .split('\n')
          .filter((n) => n.startsWith(prefix))
      : [],
    loops: loopsBackedBy(dir),
  };
}

/** Last resort, for a test that failed half-way: every step runs, the first error is rethrown. */
function releaseAll(dir: string, prefix: string): void {
  const errors: unknown[] = [];
  const attempt = (fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      errors.push(e);
    }
  };
  for (const m of mountsUnder(dir).reverse()) attempt(() => sh('umount', [m]));
  // Thin volumes before the pool that backs them.
  const ours = dmNames().filter((n) => n.startsWith(prefix));
  for (const name of [
    ...ours.filter((n) => !n.endsWith('-pool')),
    ...ours.filter((n) => n.endsWith('-pool')),
  ]) {
    attempt(() => sh('dmsetup', ['remove', name]));
  }
  attempt(() => sh('dmsetup', ['mknodes']));
  for (const dev of loopsBackedBy(dir)) attempt(() => sh('losetup', ['--detach', dev]));
  rmSync(dir, { recursive: true, force: true });
  if (errors.length > 0) throw errors[0];
}

function dmCreate(name: string, table: string): string {
  sh('dmsetup', ['create', name, '--table', table]);
  // No udev in the VM: make /dev/mapper/<name> ourselves (a no-op where udev did it).
  sh('dmsetup', ['mknodes', name]);
  const node = `/dev/mapper/${name}`;
  assert.ok(existsSync(node), `${node} exists after mknodes`);
  return node;
}

describe('the test VM kernel: device-mapper thin provisioning', () => {
  const dir = mkdtempSync('/tmp/thinrelay-vm-smoke-');
  const prefix = `thinrelay-smoke-${process.pid}-`;
  const poolName = `${prefix}pool`;
  const thinName = `${prefix}thin0`;
  const snapName = `${prefix}snap1`;
  let metaLoop = '';
  let dataLoop = '';
  let pool = '';
  let thin = '';
  const originMnt = join(dir, 'origin');
  const snapMnt = join(dir, 'snap');

  before(() => {
    const meta = join(dir, 'meta.img');
    const data = join(dir, 'data.img');
    writeFileSync(meta, '');
    writeFileSync(data, '');
    sh('truncate', ['-s', String(metaBytes), meta]);
    sh('truncate', ['-s', String(dataBytes), data]);
    metaLoop = sh('losetup', ['--find', '--show', meta]).trim();
    dataLoop = sh('losetup', ['--find', '--show', data]).trim();
  });

  after(() => releaseAll(dir, prefix));

  it('dmsetup reaches the kernel driver', () => {
    const out = sh('dmsetup', ['version']);
    assert.match(out, /Driver version:\s+4\.\d+\.\d+/);
    assert.match(sh('dmsetup', ['targets']), /^thin-pool\s+v\d/m);
  });

  it('creates a thin pool with error_if_no_space and a thin volume in it', () => {
    const dataSectors = dataBytes / sectorBytes;
    pool = dmCreate(
      poolName,
      `0 ${dataSectors} thin-pool ${metaLoop} ${dataLoop} ${blockSectors} ${lowWaterBlocks} 1 error_if_no_space`,
    );
    const status = sh('dmsetup', ['status', poolName]);
    // <start> <len> thin-pool <transaction id> <used>/<total meta> <used>/<total data> - rw ... error_if_no_space ...
    assert.match(
      status,
      new RegExp(`^0 ${dataSectors} thin-pool 0 \\d+/\\d+ 0/${dataSectors / blockSectors} `),
    );
    assert.match(status, /\berror_if_no_space\b/);

    sh('dmsetup', ['message', poolName, '0', 'create_thin 0']);
    thin = dmCreate(thinName, `0 ${thinBytes / sectorBytes} thin ${pool} 0`);
    assert.equal(sh('blockdev', ['--getsize64', thin]).trim(), String(thinBytes));
  });

  it('puts ext4 on the thin volume and writes to it', () => {
    sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', thin]);
    mkdirSync(originMnt);
    sh('mount', ['-t', 'ext4', thin, originMnt]);
    writeFileSync(join(originMnt, 'hello.txt'), 'before the snapshot\n');
    sh('sync', ['--file-system', originMnt]);
    const used = /thin-pool \d+ \d+\/\d+ (\d+)\//.exec(sh('dmsetup', ['status', poolName]));
    assert.ok(used !== null && Number(used[1]) > 0, 'the pool has allocated data blocks');
  });

  it('snapshots the mounted origin (suspend, create_snap, resume); the snapshot keeps the old content', () => {
    sh('dmsetup', ['suspend', thinName]);
    try {
      sh('dmsetup', ['message', poolName, '0', 'create_snap 1 0']);
    } finally {
      sh('dmsetup', ['resume', thinName]);
    }
    writeFileSync(join(originMnt, 'hello.txt'), 'after the snapshot\n');
    sh('sync', ['--file-system', originMnt]);

    const snap = dmCreate(snapName, `0 ${thinBytes / sectorBytes} thin ${pool} 1`);
    mkdirSync(snapMnt);
    // The origin was mounted when snapshotted: its journal needs no replay to read.
    sh('mount', ['-t', 'ext4', '-o', 'ro,noload', snap, snapMnt]);
    assert.equal(readFileSync(join(snapMnt, 'hello.txt'), 'utf8'), 'before the snapshot\n');
    assert.equal(readFileSync(join(originMnt, 'hello.txt'), 'utf8'), 'after the snapshot\n');
  });

  it('thin_ls lists both thin ids from a metadata snapshot of the live pool', () => {
    sh('dmsetup', ['message', poolName, '0', 'reserve_metadata_snap']);
    let listed: string;
    try {
      listed = sh('thin_ls', ['--metadata-snap', '--no-headers', '--format', 'DEV', metaLoop]);
    } finally {
      sh('dmsetup', ['message', poolName, '0', 'release_metadata_snap']);
    }
    const ids = listed
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .map(Number)
      .sort((a, b) => a - b);
    assert.deepEqual(ids, [0, 1]);
  });

  it('tears everything down and leaves nothing behind', () => {
    sh('umount', [snapMnt]);
    sh('umount', [originMnt]);
    sh('dmsetup', ['remove', snapName]);
    sh('dmsetup', ['remove', thinName]);
    sh('dmsetup', ['message', poolName, '0', 'delete 1']);
    sh('dmsetup', ['message', poolName, '0', 'delete 0']);
    sh('dmsetup', ['remove', poolName]);
    sh('dmsetup', ['mknodes']);
    sh('losetup', ['--detach', metaLoop]);
    sh('losetup', ['--detach', dataLoop]);
    assert.deepEqual(leftovers(dir, prefix), {
      mounts: [],
      dmDevices: [],
      mapperNodes: [],
      loops: [],
    });
  });
});
