/**
 * Growing an unmounted ext4 to the size of the file or device it sits on
 * (a layer's clone made larger than its parent). Offline, not online: an
 * online grow needs CAP_SYS_RESOURCE, which containers and CI runners often
 * drop (this project's CI does), and the clone is not mounted yet anyway.
 * Never shrinks; a filesystem already that size is left as it is.
 *
 * The check before the resize is read-only (`e2fsck -f -n`): a fixing check
 * (-p) would change the image's tree, and it fails outright ("UNEXPECTED
 * INCONSISTENCY", exit 4) when a layer replaced the root's lost+found by a
 * file or a symlink, which is the image's right. resize2fs then needs -f: it
 * refuses an offline resize unless a check was recorded since the last
 * mount, and a read-only check records nothing.
 */
import { failpoint } from '../failpoints.js';
import { run } from './exec.js';

/**
 * Not crash-safe by itself (an offline resize is not journaled): callers
 * grow only a clone no one uses yet, which recovery discards if this is cut.
 */
export async function growExt4(target: string): Promise<void> {
  // Any finding at all fails the clone (its parent is sealed and was unmounted cleanly).
  await run('e2fsck', ['-f', '-n', target], { timeoutMs: 600_000 });
  failpoint('layer:grow:checked');
  await run('resize2fs', ['-f', target], { timeoutMs: 600_000 });
}
