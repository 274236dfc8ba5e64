/** Mount a device read-only in a fresh temp dir, run fn on the tree, always unmount and delete the dir. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function withMounted<T>(device: string, fn: (root: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-probe-'));
  try {
    execFileSync('mount', ['-o', 'ro', device, dir]);
    try {
      return fn(dir);
    } finally {
      execFileSync('umount', [dir]);
    }
  } finally {
    rmdirSync(dir);
  }
}
