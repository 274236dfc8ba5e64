/** Mounts: mount/umount and a reader for /proc/self/mountinfo. */
import { readFileSync } from 'node:fs';
import { run } from './exec.js';
import { jittered } from '../retry.js';

export interface MountEntry {
  mountpoint: string;
  source: string;
  fstype: string;
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function listMounts(): MountEntry[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [pre, post] = line.split(' - ');
    const fields = pre?.split(' ') ?? [];
    const [fstype, source] = post?.split(' ') ?? [];
    if (fields[4] === undefined || fstype === undefined || source === undefined) continue;
    entries.push({
      mountpoint: unescapeMountField(fields[4]),
      source: unescapeMountField(source),
      fstype,
    });
  }
  return entries;
}

export function isMounted(mountpoint: string): boolean {
  return listMounts().some((m) => m.mountpoint === mountpoint);
}

export async function mountExt4(
  device: string,
  mountpoint: string,
  options: readonly string[],
): Promise<void> {
  await run('mount', ['-t', 'ext4', '-o', options.join(','), device, mountpoint]);
}

/** Flush one filesystem (syncfs), so its content survives power loss. */
export async function syncFilesystem(mountpoint: string): Promise<void> {
  await run('sync', ['--file-system', mountpoint]);
}

/** Unmount, retrying briefly while something still holds it (EBUSY). */
export async function unmount(mountpoint: string, attempts = 5): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      await run('umount', [mountpoint]);
      return;
    } catch (err) {
      if (!isMounted(mountpoint)) return;
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, jittered(100 * 2 ** i)));
    }
  }
}
