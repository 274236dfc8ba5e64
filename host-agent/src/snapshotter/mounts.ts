/**
 * What Mounts returns for a snapshot's volume, per backend. Loop: the
 * volume's ext4 file with the "loop" option: containerd (and its shim, for
 * a container's rootfs) attaches it with autoclear, so the loop device goes
 * away with the last unmount and nothing here tracks it. devmapper (the
 * thin device's path) is not served yet.
 */
import { statSync } from 'node:fs';
import { EnvironmentError } from '../errors.js';
import type { StorageObjectRow } from '../store/objects.js';
import type { StorageBackend } from '../storage/backend.js';
import { LoopBackend } from '../storage/loop/loop-backend.js';
import { objectName } from '../storage/names.js';

export interface SnapshotMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** Refuse to serve a backend whose mounts are not written yet (at start, not per call). */
export function checkServable(backend: StorageBackend): void {
  if (!(backend instanceof LoopBackend))
    throw new EnvironmentError(
      'POOL_UNAVAILABLE',
      `the snapshotter serves the loop backend only so far (configured: ${backend.name})`,
      'run it with --backend loop and its own --state-dir',
    );
}

function fileOf(backend: StorageBackend, volume: StorageObjectRow): string {
  checkServable(backend);
  return (backend as LoopBackend).fileOf({ name: objectName(volume.kind, volume.id) });
}

export function mountsOf(
  backend: StorageBackend,
  volume: StorageObjectRow,
  readOnly: boolean,
): SnapshotMount[] {
  return [
    {
      type: 'ext4',
      source: fileOf(backend, volume),
      target: '',
      options: readOnly ? ['ro', 'loop'] : ['rw', 'loop'],
    },
  ];
}

/** Bytes the volume takes on the pool's filesystem (what `du` says of its file). */
export function bytesUsed(backend: StorageBackend, volume: StorageObjectRow): number {
  return statSync(fileOf(backend, volume)).blocks * 512;
}
