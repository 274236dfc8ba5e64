/**
 * An untrusted image (`thinrelay verify` found it no longer passes the
 * signature policy) takes no new snapshot: process-image, activate and the
 * ready fast path refuse it with UNTRUSTED. Snapshots in use are left alone.
 */
import { UsageError } from '../errors.js';
import type { ImageRow } from '../store/images.js';

export function refuseUntrusted(image: ImageRow): void {
  if (image.status === 'untrusted')
    throw new UsageError(
      'UNTRUSTED',
      `image ${image.id} (${image.key}) no longer passes the signature policy: ${image.error_message ?? 'untrusted'}`,
      'sign it with a trusted key and run `thinrelay verify` again, or remove it; snapshots in use are left alone',
    );
}
