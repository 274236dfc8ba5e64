/**
 * OCI whiteout names (image-spec layer.md): `.wh.<name>` removes <name> of
 * the lower layers, `.wh..wh..opq` hides every lower child of its
 * directory. A whiteout only ever names something to delete, so its name is
 * held to stricter rules than a member's: anything that could reach out of
 * its directory is refused with LAYER_UNSAFE_WHITEOUT.
 */
import { ImageError } from '../errors.js';
import { normaliseArchivePath, type PathLimits } from './path-policy.js';
import { printable } from './printable.js';

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';

export interface Whiteout {
  /** Root-relative directory the whiteout stands in ("" is the root). */
  dir: string;
  /** What it removes: dir/<name>, or for an opaque whiteout the directory whose lower children it hides. */
  target: string;
  opaque: boolean;
}

/** The last component of an archive name, ignoring one trailing '/'. */
function baseName(raw: string): string {
  const end = raw.endsWith('/') ? raw.length - 1 : raw.length;
  return raw.slice(raw.lastIndexOf('/', end - 1) + 1, end);
}

/** Whether the member named `raw` is a whiteout (cheap: most members are not). */
export function isWhiteoutName(raw: string): boolean {
  return raw.includes(WHITEOUT_PREFIX) && baseName(raw).startsWith(WHITEOUT_PREFIX);
}

export function unsafeWhiteout(what: string, why: string): ImageError {
  return new ImageError('LAYER_UNSAFE_WHITEOUT', `${what}: whiteout ${why}`);
}

/**
 * The whiteout `raw` (a name isWhiteoutName accepted), checked and
 * normalised. `what` names it in errors ("layer 2: member '…'").
 */
export function parseWhiteout(raw: string, limits: PathLimits, what: () => string): Whiteout {
  if (raw.includes('\0')) throw unsafeWhiteout(what(), 'contains a NUL byte');
  if (raw.startsWith('/')) throw unsafeWhiteout(what(), 'is an absolute path');
  if (raw.split('/').includes('..')) throw unsafeWhiteout(what(), "has a '..' component");
  const path = normaliseArchivePath(raw, limits, what);
  const slash = path.lastIndexOf('/');
  const dir = slash < 0 ? '' : path.slice(0, slash);
  const base = path.slice(slash + 1);
  if (base === OPAQUE_WHITEOUT) return { dir, target: dir, opaque: true };
  const name = base.slice(WHITEOUT_PREFIX.length);
  if (name === '' || name === '.' || name === '..')
    throw unsafeWhiteout(what(), `${printable(raw)} would remove the root or a parent`);
  return { dir, target: dir === '' ? name : `${dir}/${name}`, opaque: false };
}
