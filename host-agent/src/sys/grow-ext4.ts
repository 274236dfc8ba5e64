/**
 * Growing an unmounted ext4 to the size of the file or device it sits on
 * (a layer's clone made larger than its parent). Offline, not online: an
 * online grow needs CAP_SYS_RESOURCE, which containers and CI runners often
 * drop (this project's CI does), and the clone is not mounted yet anyway.
 * resize2fs refuses an offline resize unless `e2fsck -f` ran since the last
 * mount, so it runs first (milliseconds on a filesystem just unmounted
 * cleanly). Never shrinks; a filesystem already that size is left as it is.
 */
import { failpoint } from '../failpoints.js';
import { run } from './exec.js';

/**
 * Not crash-safe by itself (an offline resize is not journaled): callers
 * grow only a clone no one uses yet, which recovery discards if this is cut.
 */
export async function growExt4(target: string): Promise<void> {
  // -p fixes nothing that needs a human; any finding at all fails the clone (its parent is sealed).
  await run('e2fsck', ['-f', '-p', target], { timeoutMs: 600_000 });
  failpoint('layer:grow:checked');
  await run('resize2fs', [target], { timeoutMs: 600_000 });
}
