/**
 * What a devmapper state dir holds on this (VM) host, asserted on before the
 * last-resort release in t.after(): dm devices of its prefix, the pool's real
 * thin id list (from its metadata), loop devices backed by its files, mounts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dmPrefixFor } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { parseThinDump } from '../../host-agent/src/storage/devmapper/thin-metadata.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import type { CliResult } from '../helpers/cli.js';

const sh = (file: string, args: string[]): string =>
  execFileSync(file, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });

export interface DmHostInventory {
  /** dm device names of this state dir (the pool included). */
  devices: string[];
  loops: string[];
  mounts: string[];
}

export function poolNameOf(stateDir: string): string {
  return `${dmPrefixFor(stateDir)}pool`;
}

function loopsUnder(dir: string): string[] {
  const out = sh('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']);
  if (out.trim() === '') return [];
  const parsed = JSON.parse(out) as { loopdevices: { name: string; 'back-file': string | null }[] };
  return parsed.loopdevices
    .filter((l) => (l['back-file'] ?? '').startsWith(dir + '/'))
    .map((l) => l.name)
    .sort();
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' ')[4]!)
    .filter((m) => m.startsWith(dir + '/'))
    .sort();
}

export function dmDevices(prefix: string): string[] {
  const out = sh('dmsetup', ['ls']);
  return out
    .split('\n')
    .map((l) => l.split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(prefix))
    .sort();
}

export function dmHostInventory(stateDir: string): DmHostInventory {
  return {
    devices: dmDevices(dmPrefixFor(stateDir)),
    loops: loopsUnder(stateDir),
    mounts: mountsUnder(stateDir),
  };
}

/** The pool's thin ids, read from its metadata as an operator would. */
export function poolThinIds(pool: string): number[] {
  const table = sh('dmsetup', ['table', pool]).trim().split(/\s+/);
  const [major, minor] = table[3]!.split(':');
  const devname = /^DEVNAME=(.+)$/m.exec(
    readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8'),
  )![1]!;
  sh('dmsetup', ['message', pool, '0', 'reserve_metadata_snap']);
  try {
    return parseThinDump(
      sh('thin_dump', ['--metadata-snap', '--skip-mappings', '--format', 'xml', `/dev/${devname}`]),
    ).thinIds;
  } finally {
    sh('dmsetup', ['message', pool, '0', 'release_metadata_snap']);
  }
}

export function poolTransactionId(pool: string): number {
  return Number(sh('dmsetup', ['status', pool]).trim().split(/\s+/)[3]);
}

/** The store's side: live thin ids, active snapshots' device names. */
export function storeView(
  stateDir: string,
  pool = poolNameOf(stateDir),
): {
  thinIds: number[];
  activeDevices: string[];
  journalTid: number | null;
  openOp: string | null;
} {
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    const live = store.objects.listLive();
    const journal = store.poolJournal.get(pool);
    return {
      thinIds: live
        .map((o) => o.thin_id)
        .filter((t): t is number => t !== null)
        .sort((a, b) => a - b),
      activeDevices: store.snapshots
        .list()
        .map((s) => s.device_path.replace('/dev/mapper/', ''))
        .sort(),
      journalTid: journal?.transaction_id ?? null,
      openOp: journal?.open_op ?? null,
    };
  } finally {
    store.close();
  }
}

export function freshStateDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Unmount, remove every dm device of the state dir (pool last), detach its loops, delete it. */
export function releaseDmStateDir(stateDir: string): void {
  const prefix = dmPrefixFor(stateDir);
  for (const m of mountsUnder(stateDir).reverse()) sh('umount', ['-l', m]);
  const pool = `${prefix}pool`;
  for (const d of dmDevices(prefix).filter((d) => d !== pool)) sh('dmsetup', ['remove', '-f', d]);
  if (dmDevices(prefix).includes(pool)) sh('dmsetup', ['remove', '-f', pool]);
  for (const l of loopsUnder(stateDir)) sh('losetup', ['-d', l]);
  sh('dmsetup', ['mknodes']);
  if (existsSync(stateDir)) rmSync(stateDir, { recursive: true, force: true });
}

export function devmapperEnv(stateDir: string): Record<string, string> {
  return {
    THINRELAY_BACKEND: 'devmapper',
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_RESERVE_BYTES: '0',
    THINRELAY_POOL_MIN_FREE_DATA: '0',
    THINRELAY_POOL_MIN_FREE_METADATA: '0',
  };
}

/** Mount a device read-only for an async look; always unmounted and the dir removed. */
export async function withMountedAsync<T>(
  device: string,
  fn: (root: string) => Promise<T>,
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
  try {
    sh('mount', ['-o', 'ro', device, dir]);
    try {
      return await fn(dir);
    } finally {
      sh('umount', [dir]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The invariant of this issue: pool and store agree exactly, nothing else is up. */
export function assertPoolMatchesStore(stateDir: string, pool = poolNameOf(stateDir)): void {
  const view = storeView(stateDir, pool);
  assert.deepEqual(poolThinIds(pool), view.thinIds, "pool thin ids = the store's live thin ids");
  const inv = dmHostInventory(stateDir);
  assert.deepEqual(
    inv.devices.filter((d) => d !== pool),
    view.activeDevices,
    'active dm devices = active snapshots',
  );
  assert.deepEqual(inv.mounts, [], 'nothing mounted');
  assert.equal(view.openOp, null, 'no pool change left open');
  assert.equal(
    view.journalTid,
    poolTransactionId(pool),
    'journal and pool agree on the transaction id',
  );
}

/** What `process-image --json` prints. */
export interface ProcessJson {
  outcome: string;
  devicePath: string;
  imageId: number;
}

/** A CLI run that must have succeeded, its --json output parsed. */
export function cliJson<T>(r: CliResult): T {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
