/**
 * The dm ioctls thinrelay calls through node:ffi, against a real kernel (in
 * the VM), each checked against what dmsetup — libdevmapper's view of the
 * same kernel — reports: create, load, resume, status, table, suspend,
 * reload, list, device numbers and nodes; the kernel's refusals as the
 * errnos callers act on; no half device after a refused table; a device a
 * crash left without a table loaded on the next create; a node a crash left
 * naming an old minor replaced.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import {
  DmIoctlError,
  devRemove,
  devStatus,
  dmDriverVersion,
  listDevices,
} from '../../host-agent/src/storage/devmapper/dm-ioctl.js';
import {
  dmCreate,
  dmDropNode,
  dmEnsureNode,
  dmErrno,
  dmEventCount,
  dmInfo,
  dmPoolMessage,
  dmReload,
  dmRemove,
  dmResume,
  dmStatus,
  dmSuspend,
  dmTable,
} from '../../host-agent/src/storage/devmapper/device-mapper.js';
import { needsRoot } from '../helpers/root.js';

const prefix = 'thinrelay-ioctl-test-';
const dmsetup = (...args: string[]): string =>
  execFileSync('dmsetup', args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }).trim();
const exists = (name: string): boolean => {
  try {
    dmsetup('info', name);
    return true;
  } catch {
    return false;
  }
};

async function rejection(p: Promise<unknown>): Promise<DmIoctlError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof DmIoctlError, `expected a DmIoctlError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the call to fail');
}

describe('dm ioctls against the kernel', { skip: needsRoot }, () => {
  after(() => {
    for (const line of dmsetup('ls').split('\n')) {
      const name = line.split(/\s+/)[0] ?? '';
      if (name.startsWith(prefix)) dmsetup('remove', '--force', name);
    }
    execFileSync('dmsetup', ['mknodes']);
  });

  test('the interface version is the kernel’s', () => {
    const kernel = /Driver version:\s+(\S+)/.exec(dmsetup('version'))?.[1];
    assert.equal(dmDriverVersion(), kernel);
  });

  test('create, then everything dmsetup reads agrees', async () => {
    const name = `${prefix}a`;
    await dmCreate(name, '0 1024 zero\n1024 1024 error');
    // dmsetup prints a space after a target with no parameters.
    const lines = (text: string): string => text.replace(/ +$/gm, '');
    assert.equal(await dmTable(name), lines(dmsetup('table', name)));
    assert.equal(await dmTable(name), '0 1024 zero\n1024 1024 error');
    assert.equal(await dmStatus(name), lines(dmsetup('status', name)));
    const [major, minor] = dmsetup('info', '-c', '--noheadings', '-o', 'major,minor', name)
      .split(':')
      .map(Number);
    const listed = listDevices().find((d) => d.name === name);
    assert.deepEqual(listed, { name, major, minor });
    assert.deepEqual(await dmInfo(name), { name, major, minor, suspended: false });
    assert.equal(
      await dmEventCount(name),
      Number(dmsetup('info', '-c', '--noheadings', '-o', 'events', name)),
    );
    // No udev here: the node is ours, and it is the device's.
    const path = await dmEnsureNode(name);
    assert.equal(path, `/dev/mapper/${name}`);
    const st = statSync(path);
    assert.ok(st.isBlockDevice());
    assert.equal(st.rdev, statSync(`/dev/dm-${minor}`).rdev);
    const fd = openSync(path, 'r');
    closeSync(fd);
  });

  test('suspend, reload, resume: the new table goes live only on resume', async () => {
    const name = `${prefix}a`;
    await dmSuspend(name);
    assert.equal(devStatus(name).suspended, true);
    assert.match(dmsetup('info', name), /State:\s+SUSPENDED/);
    await dmReload(name, '0 4096 zero');
    assert.equal(await dmTable(name), '0 1024 zero\n1024 1024 error');
    await dmResume(name);
    assert.equal(devStatus(name).suspended, false);
    assert.equal(dmsetup('table', name), '0 4096 zero');
  });

  test('the errnos callers act on: EBUSY, ENXIO, with libc’s text', async () => {
    const name = `${prefix}a`;
    // A name in use is EBUSY to the kernel (as `dmsetup create` reports it).
    const twice = await rejection(dmCreate(name, '0 8 zero'));
    assert.equal(twice.errno, 'EBUSY');
    assert.equal(dmErrno(twice), 'EBUSY');
    assert.match(twice.message, /devCreate ioctl on \S+ failed: Device or resource busy/);
    assert.equal(dmsetup('table', name), '0 4096 zero', 'the existing device is untouched');

    const fd = openSync(`/dev/mapper/${name}`, 'r');
    try {
      const busy = await dmRemove(name, { attempts: 2, delayMs: 1 }).then(
        () => assert.fail('removed an open device'),
        (err: unknown) => err,
      );
      assert.equal(dmErrno(busy), 'EBUSY');
      assert.ok(exists(name));
    } finally {
      closeSync(fd);
    }
    await dmRemove(name);
    assert.equal(exists(name), false);
    await dmRemove(name); // gone already: nothing to do
    const missing = await rejection(dmTable(name));
    assert.equal(dmErrno(missing), 'ENXIO');
    assert.match(missing.message, /No such device or address/);
    await rejection(dmPoolMessage(name, { op: 'delete', thinId: 1 }));
  });

  test('a node left by a removed device is dropped', async () => {
    const name = `${prefix}a`;
    assert.ok(existsSync(`/dev/mapper/${name}`), 'the node outlives the device without udev');
    await dmDropNode(name);
    assert.equal(existsSync(`/dev/mapper/${name}`), false);
  });

  test('a node a crash left naming an old minor is replaced by the new device’s', async () => {
    const name = `${prefix}stale`;
    const filler = `${prefix}filler`;
    await dmCreate(name, '0 8 zero');
    const path = await dmEnsureNode(name);
    const old = statSync(path).rdev;
    // Removed, and killed before its node was dropped: the node stays.
    devRemove(name);
    assert.ok(existsSync(path));
    // Another device takes the freed minor; the name comes back on a new one.
    await dmCreate(filler, '0 8 zero');
    await dmCreate(name, '0 16 zero');
    const fillerInfo = await dmInfo(filler);
    assert.equal(
      statSync(`/dev/dm-${fillerInfo!.minor}`).rdev,
      old,
      'the filler holds the old minor',
    );
    assert.equal(await dmEnsureNode(name), path);
    const info = await dmInfo(name);
    assert.equal(statSync(path).rdev, statSync(`/dev/dm-${info!.minor}`).rdev);
    assert.notEqual(statSync(path).rdev, old);
    await dmRemove(name);
    await dmDropNode(name);
    await dmRemove(filler);
  });

  test('a table the kernel refuses leaves no device', async () => {
    const name = `${prefix}bad`;
    const err = await rejection(dmCreate(name, '0 8 no-such-target'));
    assert.equal(err.op, 'tableLoad');
    assert.equal(exists(name), false);
  });

  test('a device left without a table (a crash after create) is loaded by the next create', async () => {
    const name = `${prefix}half`;
    dmsetup('create', '--notable', name);
    assert.equal(devStatus(name).live, false);
    await dmCreate(name, '0 64 zero');
    assert.equal(devStatus(name).live, true);
    assert.equal(dmsetup('table', name), '0 64 zero');
    await dmRemove(name);
  });

  test('a message a target does not take is refused with the kernel’s errno', async () => {
    const name = `${prefix}msg`;
    await dmCreate(name, '0 8 zero');
    const err = await rejection(dmPoolMessage(name, { op: 'create_thin', thinId: 3 }));
    assert.equal(err.op, 'targetMsg');
    assert.ok(err.errno.startsWith('E'), err.errno);
    await dmRemove(name);
  });
});
