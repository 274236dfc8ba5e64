/**
 * What a state dir holds on this host, and a last-resort release used in
 * t.after() so that a failing test never leaves loop devices or mounts
 * behind. Tests assert on the inventory BEFORE this cleanup runs: cleanup
 * hides nothing from the assertions.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { StateStore } from '../../host-agent/src/store/index.js';
import { objectName } from '../../host-agent/src/storage/names.js';

export interface HostInventory {
  loops: { device: string; backingFile: string }[];
  mounts: string[];
  poolFiles: string[];
}

function listLoops(): { device: string; backingFile: string }[] {
  const out = execFileSync('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], {
    encoding: 'utf8',
  });
  if (out.trim() === '') return [];
  const parsed = JSON.parse(out) as { loopdevices: { name: string; 'back-file': string | null }[] };
  return parsed.loopdevices.map((l) => ({
    device: l.name,
    backingFile: (l['back-file'] ?? '').replace(/ \(deleted\)$/, ''),
  }));
}

function listMountpoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) =>
      l
        .split(' ')[4]!
        .replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
    );
}

export function hostInventory(stateDir: string): HostInventory {
  const prefix = stateDir.endsWith('/') ? stateDir : stateDir + '/';
  const pool = join(stateDir, 'pool');
  return {
    loops: listLoops().filter((l) => l.backingFile.startsWith(prefix)),
    mounts: listMountpoints().filter((m) => m.startsWith(prefix)),
    poolFiles: existsSync(pool) ? readdirSync(pool).sort() : [],
  };
}

/** Unmount and detach everything under stateDir, then delete it. */
export function releaseStateDir(stateDir: string): void {
  const inv = hostInventory(stateDir);
  for (const m of inv.mounts.sort().reverse()) execFileSync('umount', ['-l', m]);
  for (const l of inv.loops) execFileSync('losetup', ['-d', l.device]);
  rmSync(stateDir, { recursive: true, force: true });
}

/** The database and the host agree: every pool file, loop device and mount is accounted for. */
export function assertHostMatchesStore(stateDir: string): void {
  const inv = hostInventory(stateDir);
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    assert.deepEqual(inv.mounts, [], 'no mounts left');
    const active = store.snapshots
      .list()
      .map((s) => s.device_path)
      .sort();
    assert.deepEqual(
      inv.loops.map((l) => l.device).sort(),
      active,
      'loop devices = active snapshots',
    );
    const live = store.objects
      .listLive()
      .map((o) => objectName(o.kind, o.id) + '.img')
      .sort();
    assert.deepEqual(inv.poolFiles, live, 'pool files = live storage objects');
  } finally {
    store.close();
  }
}
