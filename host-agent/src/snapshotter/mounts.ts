/**
 * What Mounts returns for a snapshot's volume, per backend. Loop: the
 * volume's ext4 file with the "loop" option: containerd (and its shim, for
 * a container's rootfs) attaches it with autoclear, so the loop device goes
 * away with the last unmount and nothing here tracks it. devmapper: the thin
 * device itself (/dev/mapper/<name>), attached here when the snapshot is
 * prepared (again on Mounts after a reboot) and detached when it is
 * committed or removed.
 */
import { existsSync, statSync } from 'node:fs';
import { EnvironmentError } from '../errors.js';
import type { StorageObjectRow } from '../store/objects.js';
import type { StorageBackend } from '../storage/backend.js';
import { DevmapperBackend } from '../storage/devmapper/devmapper-backend.js';
import { LoopBackend } from '../storage/loop/loop-backend.js';
import type { ObjectManager } from '../storage/object-manager.js';

export interface SnapshotMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** Refuse a backend whose mounts are not written (at start, not per call). */
export function checkServable(backend: StorageBackend): void {
  if (!(backend instanceof LoopBackend) && !(backend instanceof DevmapperBackend))
    throw new EnvironmentError(
      'POOL_UNAVAILABLE',
      `the snapshotter cannot serve the ${backend.name} backend`,
      'run it with --backend loop or --backend devmapper',
    );
}

/**
 * Whether a View of a committed parent needs a volume of its own: on
 * devmapper the parent's sealed thin device stays detached (it is an origin
 * of create_snap), so a view is a thin snapshot of it, mounted read-only.
 */
export function viewNeedsOwnVolume(backend: StorageBackend): boolean {
  return backend instanceof DevmapperBackend;
}

/** Make the volume mountable where its backend needs that (devmapper: attach it). Idempotent. */
export async function attachForMounts(
  objects: ObjectManager,
  volume: StorageObjectRow,
): Promise<void> {
  const backend = objects.backend;
  if (!(backend instanceof DevmapperBackend)) return;
  const spec = objects.spec(volume);
  // Attached already (the usual case): no dmsetup call at all.
  if (existsSync(backend.devicePath(spec))) return;
  await backend.attachWritable(spec);
}

export function mountsOf(
  objects: ObjectManager,
  volume: StorageObjectRow,
  readOnly: boolean,
): SnapshotMount[] {
  const backend = objects.backend;
  checkServable(backend);
  const spec = objects.spec(volume);
  if (backend instanceof DevmapperBackend)
    return [
      {
        type: 'ext4',
        source: backend.devicePath(spec),
        target: '',
        options: [readOnly ? 'ro' : 'rw'],
      },
    ];
  return [
    {
      type: 'ext4',
      source: (backend as LoopBackend).fileOf(spec),
      target: '',
      options: readOnly ? ['ro', 'loop'] : ['rw', 'loop'],
    },
  ];
}

/**
 * Bytes the volume takes: loop, what `du` says of its file; devmapper, the
 * data its thin device maps in the pool (from the pool's metadata).
 */
export async function bytesUsed(objects: ObjectManager, volume: StorageObjectRow): Promise<number> {
  const backend = objects.backend;
  checkServable(backend);
  if (backend instanceof DevmapperBackend) return backend.mappedBytes(objects.spec(volume));
  return statSync((backend as LoopBackend).fileOf(objects.spec(volume))).blocks * 512;
}
