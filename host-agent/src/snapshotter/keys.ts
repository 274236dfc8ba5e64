/**
 * What the snapshotter accepts as a key, a name and labels. Keys are opaque
 * to thinrelay (containerd's are "<namespace>/<id>/<name>", slashes and all)
 * and never reach a file or device name (those come from object ids), so
 * only what is truly unusable is refused: empty, NUL, more than 4 KiB, and
 * labels over containerd's own limit.
 */
import { UsageError } from '../errors.js';

export const maxKeyBytes = 4096;
/** containerd's labels.Validate: a key and its value together. */
export const maxLabelBytes = 4096;

export function checkKey(what: string, key: string): void {
  if (key === '') throw new UsageError('USAGE', `${what} is empty`);
  if (key.includes('\0')) throw new UsageError('USAGE', `${what} contains a NUL byte`);
  const bytes = Buffer.byteLength(key);
  if (bytes > maxKeyBytes)
    throw new UsageError('USAGE', `${what} is ${bytes} bytes long (at most ${maxKeyBytes})`);
}

export function checkLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') throw new UsageError('USAGE', 'a label has an empty name');
    const bytes = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (bytes > maxLabelBytes)
      throw new UsageError(
        'USAGE',
        `label ${k.slice(0, 64)} is ${bytes} bytes with its value (at most ${maxLabelBytes})`,
      );
  }
}

const chainIdPattern = /^sha256:[0-9a-f]{64}$/;

export function isChainId(name: string): boolean {
  return chainIdPattern.test(name);
}

/**
 * The OCI chain ID a committed snapshot's name carries: containerd commits
 * an unpacked layer as "<namespace>/<id>/<chain ID>" (the name it shows is
 * the last part); a bare chain ID is taken as it is. Null for other names.
 */
export function chainIdOfName(name: string): string | null {
  const last = name.slice(name.lastIndexOf('/') + 1);
  return chainIdPattern.test(last) ? last : null;
}
