/** ext4 creation tuned for images: no discard (slow on thin devices), lazy inode tables. */
import { run } from './exec.js';

export async function makeExt4(target: string, opts: { label?: string } = {}): Promise<void> {
  const args = ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1'];
  if (opts.label !== undefined) args.push('-L', opts.label);
  args.push(target);
  await run('mkfs.ext4', args);
}

/**
 * Mount options while unpacking untrusted content: nosuid,nodev so nothing
 * unpacked can act as a device or setuid binary on this host, and
 * noinit_itable so the kernel does not zero inode tables behind our back
 * (that would un-sparse the backing and compete with the unpack for I/O).
 */
export const unpackMountOptions = ['nosuid', 'nodev', 'noinit_itable'] as const;
