/**
 * Is a block device in use by anyone: mounted (in any mount namespace: a
 * mount holds the device exclusively), held by another device (dm, md),
 * opened exclusively, or open in some process? Read from the kernel (sysfs
 * holders/, an O_EXCL open, /proc/<pid>/fd), never from thinrelay's own
 * bookkeeping. Reconcile asks before it detaches or deletes a device the
 * store does not know (a restored backup); the pool's eviction asks before
 * it releases a snapshot.
 */
import { closeSync, constants, openSync, readdirSync, readlinkSync, statSync } from 'node:fs';

export function deviceInUse(devicePath: string): string | null {
  return devicesInUse([devicePath]).get(devicePath) ?? null;
}

/** Device path → why it is in use; devices not in use are absent. /proc is read once for all. */
export function devicesInUse(devicePaths: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  const byRdev = new Map<number, string>();
  for (const path of devicePaths) {
    let rdev: number;
    try {
      rdev = statSync(path).rdev;
    } catch {
      continue;
    }
    byRdev.set(rdev, path);
    const why = heldOrMounted(path, rdev);
    if (why !== undefined) out.set(path, why);
  }
  if (byRdev.size > out.size) {
    for (const [rdev, pid] of openedBy(byRdev)) {
      const path = byRdev.get(rdev)!;
      if (!out.has(path)) out.set(path, `open in process ${pid}`);
    }
  }
  return out;
}

function heldOrMounted(path: string, rdev: number): string | undefined {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  try {
    if (readdirSync(`/sys/dev/block/${major}:${minor}/holders`).length > 0)
      return 'held by another device';
  } catch {
    // No sysfs entry: nothing holds it.
  }
  try {
    closeSync(openSync(path, constants.O_RDONLY | constants.O_EXCL));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EBUSY') return 'mounted or opened exclusively';
  }
  return undefined;
}

/**
 * Which of the devices (by device number: /dev/mapper/x and /dev/dm-N are one
 * device) a process other than this one has open: rdev → pid.
 */
function openedBy(wanted: Map<number, string>): Map<number, number> {
  const out = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const fdPath = `/proc/${entry}/fd/${fd}`;
        if (!readlinkSync(fdPath).startsWith('/dev/')) continue;
        const st = statSync(fdPath);
        if (st.isBlockDevice() && wanted.has(st.rdev) && !out.has(st.rdev))
          out.set(st.rdev, Number(entry));
      } catch {
        // The fd closed meanwhile.
      }
    }
  }
  return out;
}
