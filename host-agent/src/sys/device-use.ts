/**
 * Is a block device in use by anyone: mounted (in any mount namespace: a
 * mount holds the device exclusively), held by another device (dm, md),
 * opened exclusively, or open in some process? Reconcile asks before it
 * detaches or deletes a device the store does not know (a restored backup):
 * such a device is reported as foreign-in-use and left alone.
 */
import { closeSync, constants, openSync, readdirSync, readlinkSync, statSync } from 'node:fs';

export function deviceInUse(devicePath: string): string | null {
  let rdev: number;
  try {
    rdev = statSync(devicePath).rdev;
  } catch {
    return null;
  }
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  try {
    if (readdirSync(`/sys/dev/block/${major}:${minor}/holders`).length > 0)
      return 'held by another device';
  } catch {
    // No sysfs entry: nothing holds it.
  }
  try {
    closeSync(openSync(devicePath, constants.O_RDONLY | constants.O_EXCL));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EBUSY') return 'mounted or opened exclusively';
  }
  const pid = openedBy(devicePath);
  return pid === null ? null : `open in process ${pid}`;
}

/** A process (other than this one) with the device open, or null. */
function openedBy(devicePath: string): number | null {
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
        if (readlinkSync(`/proc/${entry}/fd/${fd}`) === devicePath) return Number(entry);
      } catch {
        // The fd closed meanwhile.
      }
    }
  }
  return null;
}
