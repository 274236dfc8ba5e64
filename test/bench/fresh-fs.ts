/**
 * A fresh ext4 filesystem on a loop device, made and mounted the way
 * thinrelay makes the volumes it unpacks into (same mkfs and mount options):
 * the target of every whole-process unpack figure in the benchmarks.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeExt4, unpackMountOptions } from '../../host-agent/src/sys/mkfs.js';

/** Room for the bookworm minbase rootfs (sparse: only what is written costs disk). */
const volumeBytes = 1536 * 1024 ** 2;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export interface FreshFs {
  mnt: string;
  /** The backing file of the loop device. */
  file: string;
  /** Flush and unmount; returns the milliseconds that took. */
  flushAndUnmount(): number;
  dispose(): void;
}

/** The same fresh ext4 thinrelay unpacks into: same mkfs and mount options. */
export async function freshFs(work: string, name: string): Promise<FreshFs> {
  // Let the host write back the previous run's dirty pages first, so they
  // do not compete with (and get billed to) whichever tool runs next.
  sh('sync', []);
  const file = join(work, `${name}.img`);
  const mnt = join(work, name);
  writeFileSync(file, '');
  execFileSync('truncate', ['-s', String(volumeBytes), file]);
  await makeExt4(file);
  const dev = sh('losetup', ['--find', '--show', file]).trim();
  mkdirSync(mnt, { recursive: true });
  sh('mount', ['-t', 'ext4', '-o', unpackMountOptions.join(','), dev, mnt]);
  let mounted = true;
  return {
    mnt,
    file,
    flushAndUnmount(): number {
      const t0 = performance.now();
      sh('sync', ['--file-system', mnt]);
      sh('umount', [mnt]);
      mounted = false;
      return performance.now() - t0;
    },
    dispose(): void {
      if (mounted) sh('umount', [mnt]);
      sh('losetup', ['-d', dev]);
      rmSync(file, { force: true });
      rmSync(mnt, { recursive: true, force: true });
    },
  };
}
