/**
 * Loop devices: attach and detach with util-linux losetup (it handles the
 * race for a free device); list from sysfs, which needs no process at all —
 * reconcile lists on every start, so this is on the hot path.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { CommandError, run } from './exec.js';

export interface LoopAttachment {
  device: string;
  backingFile: string;
  /** The backing file was deleted while attached. */
  deleted: boolean;
}

export async function attachLoop(file: string): Promise<string> {
  // losetup picks a free device and retries on a race with another attacher.
  return run('losetup', ['--find', '--show', '--', file]);
}

/**
 * Detach; a device that is no longer attached is already what we want
 * (another process detached it first: losetup answers ENXIO), not an error.
 */
export async function detachLoop(device: string): Promise<void> {
  try {
    await run('losetup', ['--detach', device]);
  } catch (err) {
    if (!(err instanceof CommandError) || !/No such device or address/.test(err.stderr)) throw err;
    if (isAttached(device)) throw err;
  }
}

function isAttached(device: string): boolean {
  return existsSync(`/sys/block/${device.replace(/^\/dev\//, '')}/loop/backing_file`);
}

export function listLoops(): Promise<LoopAttachment[]> {
  const attachments: LoopAttachment[] = [];
  for (const name of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    let back: string;
    try {
      back = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').replace(/\n$/, '');
    } catch (err) {
      // No loop/ directory: the device exists but is not attached.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const deleted = back.endsWith(' (deleted)');
    attachments.push({
      device: `/dev/${name}`,
      backingFile: deleted ? back.slice(0, -' (deleted)'.length) : back,
      deleted,
    });
  }
  return Promise.resolve(attachments);
}

export async function loopsFor(file: string): Promise<string[]> {
  return (await listLoops()).filter((l) => l.backingFile === file).map((l) => l.device);
}
