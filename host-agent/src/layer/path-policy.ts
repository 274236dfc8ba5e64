/**
 * Where a member may go. The filesystem is private to this unpack, so
 * instead of asking the kernel (racy, and it follows symlinks) we keep a
 * model of every path created so far and check each member against it before
 * anything touches the disk. A path is recorded as a directory only if all
 * its ancestors were directories when it was made. Symlinks are created but
 * never traversed: a member whose parent is a symlink is refused, so link
 * targets are data, never directions.
 *
 * A flat tar goes into a fresh filesystem, where directories are never
 * removed or replaced. An OCI layer may remove them (whiteouts, a file over
 * a directory), and may go onto a filesystem that holds lower layers: the
 * model then learns those lazily, one lstat per path the first time a member
 * touches it, ancestors first, so no lookup ever passes through a link.
 */
import { ImageError, type ImageFailureCode, InternalError } from '../errors.js';
import type { ImageLimits } from '../limits.js';
import { printable } from './printable.js';

export type NodeKind = 'dir' | 'file' | 'symlink' | 'special';

export type PathLimits = Pick<ImageLimits, 'maxPathLength' | 'maxPathDepth'>;

/** ext4 (and every Linux filesystem we'd use) caps one name at 255 bytes. */
const MAX_COMPONENT_BYTES = 255;
/** Linux refuses longer symlink targets (PATH_MAX including the NUL). */
const MAX_SYMLINK_TARGET_BYTES = 4095;

const kindNames: Record<NodeKind, string> = {
  dir: 'directory',
  file: 'regular file',
  symlink: 'symbolic link',
  special: 'device or fifo',
};

export function kindName(kind: NodeKind): string {
  return kindNames[kind];
}

/**
 * The common case, checked in one pass: components that are non-empty, do
 * not start with '.' (so are neither '.' nor '..') and hold no NUL or U+FFFD.
 * Anything else takes the component-by-component path below, which also
 * produces the error.
 */
const PLAIN_PATH = /^[^/.\0\ufffd][^/\0\ufffd]*(?:\/[^/.\0\ufffd][^/\0\ufffd]*)*$/;

/** Whether a plain path is within every limit; when unsure, false (the slow path decides). */
function fitsLimits(path: string, limits: PathLimits): boolean {
  // A UTF-16 unit is at most 3 UTF-8 bytes.
  if (path.length * 3 > limits.maxPathLength && Buffer.byteLength(path) > limits.maxPathLength) {
    return false;
  }
  if (path.length * 3 <= MAX_COMPONENT_BYTES && path.length < 2 * limits.maxPathDepth) return true;
  let components = 0;
  for (let start = 0; start <= path.length; components++) {
    let end = path.indexOf('/', start);
    if (end === -1) end = path.length;
    if ((end - start) * 3 > MAX_COMPONENT_BYTES) return false;
    start = end + 1;
  }
  return components <= limits.maxPathDepth;
}

/**
 * Normalises an archive path to a root-relative one: "" is the root itself,
 * otherwise components joined by '/', none empty, '.' or '..'. One leading
 * "./" and one trailing '/' are accepted (tar writes both); "." components
 * are dropped as harmless. Throws with `escapeCode` for absolute names and
 * '..' (ARCHIVE_PATH_ESCAPE for members, ARCHIVE_LINK_ESCAPE for hard link
 * targets), ARCHIVE_BAD_NAME for malformed names and LIMIT_* for limits.
 * `what()` starts the error message and names the member (built only on failure).
 */
export function normaliseArchivePath(
  raw: string,
  limits: PathLimits,
  what: () => string,
  escapeCode: ImageFailureCode = 'ARCHIVE_PATH_ESCAPE',
): string {
  if (raw.length === 0) throw new ImageError('ARCHIVE_BAD_NAME', `${what()}: the name is empty`);
  if (raw.includes('\0'))
    throw new ImageError('ARCHIVE_BAD_NAME', `${what()}: the name contains a NUL byte`);
  if (raw.includes('\ufffd')) {
    throw new ImageError('ARCHIVE_BAD_NAME', `${what()}: the name is not valid UTF-8`);
  }
  if (raw.startsWith('/'))
    throw new ImageError(escapeCode, `${what()}: absolute paths are not allowed`);
  let path = raw.startsWith('./') ? raw.slice(2) : raw;
  if (path.endsWith('/')) path = path.slice(0, -1);
  if (path === '' || path === '.') return '';
  if (PLAIN_PATH.test(path) && fitsLimits(path, limits)) return path;
  const kept: string[] = [];
  for (const component of path.split('/')) {
    if (component === '..')
      throw new ImageError(escapeCode, `${what()}: '..' components are not allowed`);
    if (component === '')
      throw new ImageError('ARCHIVE_BAD_NAME', `${what()}: the path has an empty component`);
    if (component === '.') continue;
    if (Buffer.byteLength(component) > MAX_COMPONENT_BYTES) {
      throw new ImageError(
        'ARCHIVE_BAD_NAME',
        `${what()}: a path component is longer than 255 bytes`,
      );
    }
    kept.push(component);
  }
  if (kept.length > limits.maxPathDepth) {
    throw new ImageError(
      'LIMIT_PATH_DEPTH',
      `${what()}: the path is deeper than the limit of ${limits.maxPathDepth} components`,
    );
  }
  const normalised = kept.join('/');
  if (Buffer.byteLength(normalised) > limits.maxPathLength) {
    throw new ImageError(
      'LIMIT_PATH_LENGTH',
      `${what()}: the path is longer than the limit of ${limits.maxPathLength} bytes`,
    );
  }
  return normalised;
}

/** Symlink targets are stored verbatim (absolute ones too: /etc/alternatives/*) and never resolved here. */
export function checkSymlinkTarget(target: string, limits: PathLimits, what: () => string): void {
  if (target.length === 0)
    throw new ImageError('ARCHIVE_MALFORMED', `${what()}: the symlink target is empty`);
  if (target.includes('\0') || target.includes('\ufffd')) {
    throw new ImageError('ARCHIVE_BAD_NAME', `${what()}: the symlink target is not a valid name`);
  }
  const bytes = Buffer.byteLength(target);
  if (bytes > MAX_SYMLINK_TARGET_BYTES || bytes > limits.maxPathLength) {
    throw new ImageError(
      'LIMIT_PATH_LENGTH',
      `${what()}: the symlink target is too long (${bytes} bytes)`,
    );
  }
}

/**
 * What lies beneath a directory the model did not create: a filesystem that
 * already holds lower layers. `kindOf` asks the disk (lstat, never following
 * a link) for one path whose ancestors the model knows to be real
 * directories; undefined when nothing is there.
 */
export interface LowerTree {
  kindOf(path: string): NodeKind | undefined;
}

export interface PathModelOptions {
  /**
   * Layer semantics (OCI image-spec): directories can be removed (whiteouts,
   * a non-directory over a directory), so the model keeps each directory's
   * children to forget a whole subtree at once.
   */
  layered?: boolean;
  /** The filesystem is not empty: paths the model has not seen are looked up there, lazily. */
  lower?: LowerTree;
  /** The reason code for a path beneath a symlink (LAYER_UNSAFE_LINK for layers). */
  unsafeLinkCode?: ImageFailureCode;
}

/** Where a path's ancestors lead (see PathModel.parentState). */
export type ParentState = 'dir' | 'missing' | 'not-dir';

/** What is at each root-relative path the unpack has created or seen ("" is the root). */
const SLASH = 0x2f;
const NO_PATHS: string[] = [];

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

export class PathModel {
  private readonly kinds = new Map<string, NodeKind>([['', 'dir']]);
  /** A directory known to exist in the model (see inLastDirectory). */
  private lastDirectory: string | undefined;
  /** Layered only: the known children of each directory. */
  private readonly children: Map<string, Set<string>> | undefined;
  /** Directories found on the lower filesystem: children the model has not seen may exist. */
  private readonly lowerDirs = new Set<string>();
  private readonly lower: LowerTree | undefined;
  private readonly unsafeLinkCode: ImageFailureCode;

  constructor(opts: PathModelOptions = {}) {
    this.children = opts.layered === true || opts.lower !== undefined ? new Map() : undefined;
    this.lower = opts.lower;
    this.unsafeLinkCode = opts.unsafeLinkCode ?? 'ARCHIVE_UNSAFE_LINK';
    if (this.lower !== undefined) this.lowerDirs.add('');
  }

  get(path: string): NodeKind | undefined {
    return this.kinds.get(path);
  }

  /**
   * What is at `path`, asking the lower filesystem when the model has not
   * seen it. Its parent must be known (missingAncestors or parentState first).
   */
  lookup(path: string): NodeKind | undefined {
    const known = this.kinds.get(path);
    if (known !== undefined || this.lower === undefined || path === '') return known;
    if (!this.lowerDirs.has(parentOf(path))) return undefined;
    const kind = this.lower.kindOf(path);
    if (kind !== undefined) this.learn(path, kind);
    return kind;
  }

  /** Whether `path` is a directory the lower layers made (not one this unpack created). */
  isLowerDirectory(path: string): boolean {
    return this.lowerDirs.has(path);
  }

  set(path: string, kind: NodeKind): void {
    this.kinds.set(path, kind);
    if (kind === 'dir') this.lastDirectory = path;
    if (this.children !== undefined && path !== '') this.addChild(path);
  }

  /** Only non-directories are ever removed (a directory is never replaced). */
  remove(path: string): void {
    if (this.kinds.get(path) === 'dir')
      throw new InternalError(`refusing to forget directory ${path}`);
    this.kinds.delete(path);
    this.children?.get(parentOf(path))?.delete(path);
  }

  /**
   * Layered only: forgets `path` and everything known beneath it (the caller
   * removes them from disk). Returns the forgotten paths, `path` first.
   */
  removeTree(path: string): string[] {
    const children = this.children;
    if (children === undefined) throw new InternalError('removeTree needs a layered model');
    if (path === '') throw new InternalError('refusing to forget the root');
    const removed: string[] = [];
    const visit = (p: string): void => {
      removed.push(p);
      const kids = children.get(p);
      if (kids !== undefined) {
        for (const kid of kids) visit(kid);
        children.delete(p);
      }
      this.kinds.delete(p);
      this.lowerDirs.delete(p);
    };
    visit(path);
    children.get(parentOf(path))?.delete(path);
    const last = this.lastDirectory;
    if (last !== undefined && (last === path || last.startsWith(`${path}/`))) {
      this.lastDirectory = undefined;
    }
    return removed;
  }

  /**
   * The ancestors of `path` that do not exist yet, shallowest first (tar
   * creates them, like GNU tar does). Throws if any ancestor is not a
   * directory: through a symlink that would write wherever the link points.
   */
  missingAncestors(path: string, what: () => string): string[] {
    if (this.inLastDirectory(path)) return NO_PATHS;
    const missing: string[] = [];
    for (let end = path.lastIndexOf('/'); end > 0; end = path.lastIndexOf('/', end - 1)) {
      const ancestor = path.slice(0, end);
      const kind = this.kinds.get(ancestor);
      if (kind === 'dir') {
        if (missing.length === 0) this.lastDirectory = ancestor;
        break;
      }
      if (kind !== undefined) throw this.notADirectory(ancestor, kind, what);
      missing.push(ancestor);
    }
    missing.reverse();
    if (this.lower === undefined || missing.length === 0) return missing;
    // The model has not seen them: those the lower layers made are on disk.
    let i = 0;
    for (; i < missing.length; i++) {
      const kind = this.lookup(missing[i]!);
      if (kind === undefined) break;
      if (kind !== 'dir') throw this.notADirectory(missing[i]!, kind, what);
    }
    if (i === missing.length) this.lastDirectory = missing[i - 1];
    return missing.slice(i);
  }

  /**
   * Where the ancestors of `path` lead, learning the lower ones: 'dir' when
   * all exist as directories, 'missing' when one does not exist, 'not-dir'
   * when one is a file or device. Throws when one is a symlink, with `code`
   * (a whiteout or hard link target must never resolve through a link).
   */
  parentState(path: string, what: () => string, code: ImageFailureCode): ParentState {
    for (let end = path.indexOf('/'); end > 0; end = path.indexOf('/', end + 1)) {
      const ancestor = path.slice(0, end);
      const kind = this.lookup(ancestor);
      if (kind === undefined) return 'missing';
      if (kind === 'symlink') {
        throw new ImageError(
          code,
          `${what()}: ${printable(ancestor)} on its path is a symbolic link; links are never followed`,
        );
      }
      if (kind !== 'dir') return 'not-dir';
    }
    return 'dir';
  }

  private notADirectory(ancestor: string, kind: NodeKind, what: () => string): ImageError {
    if (kind === 'symlink') {
      return new ImageError(
        this.unsafeLinkCode,
        `${what()}: its parent ${printable(ancestor)} is a symbolic link; writing through links is refused`,
      );
    }
    return new ImageError(
      'ARCHIVE_CONFLICT',
      `${what()}: its parent ${printable(ancestor)} is a ${kindName(kind)}, not a directory`,
    );
  }

  /** A path found on the lower filesystem. */
  private learn(path: string, kind: NodeKind): void {
    this.kinds.set(path, kind);
    if (kind === 'dir') this.lowerDirs.add(path);
    this.addChild(path);
  }

  private addChild(path: string): void {
    const parent = parentOf(path);
    let kids = this.children!.get(parent);
    if (kids === undefined) this.children!.set(parent, (kids = new Set()));
    kids.add(path);
  }

  /**
   * Members of one directory come together in a tar, so the parent checked
   * last is usually the parent again: a string compare instead of slicing
   * and hashing. Only removeTree forgets a directory, and it resets this.
   */
  private inLastDirectory(path: string): boolean {
    const dir = this.lastDirectory;
    return (
      dir !== undefined &&
      path.length > dir.length + 1 &&
      path.charCodeAt(dir.length) === SLASH &&
      path.startsWith(dir) &&
      path.indexOf('/', dir.length + 1) === -1
    );
  }
}
