/**
 * Layer semantics (OCI image-spec layer.md), worked out on member indexes
 * before a byte is written: layers apply in order into one flattened tree;
 * `.wh.<name>` removes a lower path, `.wh..wh..opq` hides every lower child
 * of its directory (before the layer's other entries, wherever it stands);
 * a non-directory replaces a directory (and its subtree) and vice versa; an
 * upper directory entry replaces the lower one's metadata. The surviving
 * members, in an order the unpacker accepts, are what gets written.
 *
 * Hostile layers are refused here with LAYER_* codes: unsafe whiteout names,
 * whiteouts of the root or through a symlink, and any member beneath a
 * symlink (a lower layer's link must never be followed by an upper write).
 */
import { posix } from 'node:path';
import { ImageError } from '../errors.js';
import { normaliseArchivePath, type PathLimits } from '../unpack/path-policy.js';
import { printable } from '../unpack/printable.js';
import { isWhiteoutName, OPAQUE_WHITEOUT, parseWhiteout } from '../unpack/whiteout.js';
import type { IndexedMember } from './tar-index.js';

export interface TreeNode {
  member: IndexedMember;
  /** The file holding the member's bytes. */
  fd: number;
  layer: number;
  /** For a hard link: the node it linked to when its layer was applied. */
  linkTarget?: TreeNode;
  linkPath?: string;
}

export interface LayerInput {
  fd: number;
  members: IndexedMember[];
}

function isDir(node: TreeNode | undefined): boolean {
  return node?.member.type === 'directory';
}

export class LayerTree {
  /** Insertion order is the write order: parents are met before children. */
  private readonly nodes = new Map<string, TreeNode>();
  private readonly children = new Map<string, Set<string>>();
  whiteouts = 0;

  constructor(private readonly limits: PathLimits) {}

  apply(layer: number, input: LayerInput): void {
    // Opaque markers first: they hide only lower children, wherever they appear in the tar.
    for (const m of input.members) {
      if (posix.basename(m.name) !== OPAQUE_WHITEOUT) continue;
      const dir = this.parseWhiteout(layer, m.name).dir;
      this.whiteouts++;
      if (!this.checkNotBeneathLink(layer, dir, m.name, 'LAYER_UNSAFE_WHITEOUT')) continue;
      if (this.nodes.has(dir) && !isDir(this.nodes.get(dir))) continue; // replaced by a file in this layer
      for (const child of [...(this.children.get(dir) ?? [])]) this.remove(child);
    }
    for (const m of input.members) {
      if (posix.basename(m.name) === OPAQUE_WHITEOUT) continue;
      if (isWhiteoutName(m.name)) this.whiteout(layer, m);
      else this.add(layer, input.fd, m);
    }
  }

  /** The surviving members in write order. */
  ordered(): TreeNode[] {
    const out: TreeNode[] = [];
    for (const [path, node] of this.nodes) {
      if (node.linkTarget !== undefined && this.nodes.get(node.linkPath!) !== node.linkTarget) {
        throw new ImageError(
          'LAYER_UNSAFE_LINK',
          `layer ${node.layer}: hard link ${printable(path)} points at ${printable(node.linkPath!)}, which a later layer replaced; such images are not supported yet`,
        );
      }
      out.push(node);
    }
    return out;
  }

  private parseWhiteout(layer: number, raw: string): ReturnType<typeof parseWhiteout> {
    return parseWhiteout(raw, this.limits, () => `layer ${layer}: member ${printable(raw)}`);
  }

  private whiteout(layer: number, m: IndexedMember): void {
    const { target } = this.parseWhiteout(layer, m.name);
    this.whiteouts++;
    if (!this.checkNotBeneathLink(layer, target, m.name, 'LAYER_UNSAFE_WHITEOUT')) return;
    const node = this.nodes.get(target);
    if (node !== undefined && node.layer < layer) this.remove(target);
  }

  private add(layer: number, fd: number, m: IndexedMember): void {
    const what = (): string => `layer ${layer}: member ${printable(m.name)}`;
    const path = normaliseArchivePath(m.name, this.limits, what);
    this.checkNotBeneathLink(layer, path, m.name, 'LAYER_UNSAFE_LINK');
    const node: TreeNode = { member: m, fd, layer };
    if (m.type === 'hardlink') {
      const target = normaliseArchivePath(m.linkname, this.limits, what, 'ARCHIVE_LINK_ESCAPE');
      let linked = this.nodes.get(target);
      while (linked?.linkTarget !== undefined) linked = linked.linkTarget;
      if (
        linked === undefined ||
        linked.member.type === 'directory' ||
        linked.member.type === 'symlink'
      )
        throw new ImageError(
          'LAYER_UNSAFE_LINK',
          `${what()}: hard link target ${printable(m.linkname)} is not a file of the image`,
        );
      node.linkTarget = this.nodes.get(target);
      node.linkPath = target;
    }
    const existing = this.nodes.get(path);
    if (existing !== undefined) {
      if (isDir(existing) && m.type === 'directory') {
        this.nodes.set(path, node); // keeps its place: its children still follow it
        return;
      }
      this.remove(path);
    }
    this.nodes.set(path, node);
    if (path !== '') {
      const parent = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
      let set = this.children.get(parent);
      if (set === undefined) this.children.set(parent, (set = new Set()));
      set.add(path);
    }
  }

  /** The nearest ancestor of `path` that is in the tree but not a directory. */
  private blockingAncestor(path: string): [string, TreeNode] | undefined {
    for (let end = path.indexOf('/'); end > 0; end = path.indexOf('/', end + 1)) {
      const ancestor = path.slice(0, end);
      const node = this.nodes.get(ancestor);
      if (node !== undefined && !isDir(node)) return [ancestor, node];
    }
    return undefined;
  }

  /**
   * A member beneath a symlink is refused: writing there would follow the
   * link (perhaps out of the root). Beneath a file it is a conflict for a
   * member and a no-op for a whiteout (umoci writes `d/.wh.x` after turning
   * d into a file). Returns false when the whiteout has nothing to remove.
   */
  private checkNotBeneathLink(
    layer: number,
    path: string,
    raw: string,
    code: 'LAYER_UNSAFE_WHITEOUT' | 'LAYER_UNSAFE_LINK',
  ): boolean {
    const blocking = this.blockingAncestor(path);
    if (blocking !== undefined) {
      const [ancestor, node] = blocking;
      if (node.member.type === 'symlink') {
        throw new ImageError(
          code,
          `layer ${layer}: ${printable(raw)} lies beneath ${printable(ancestor)}, a symbolic link from layer ${node.layer}; links are never followed`,
        );
      }
      if (code === 'LAYER_UNSAFE_WHITEOUT') return false;
      throw new ImageError(
        'ARCHIVE_CONFLICT',
        `layer ${layer}: ${printable(raw)} lies beneath ${printable(ancestor)}, a ${node.member.type} from layer ${node.layer}`,
      );
    }
    if (
      code === 'LAYER_UNSAFE_WHITEOUT' &&
      raw.endsWith(OPAQUE_WHITEOUT) &&
      this.nodes.get(path)?.member.type === 'symlink'
    ) {
      throw new ImageError(code, `layer ${layer}: ${printable(raw)} marks a symbolic link opaque`);
    }
    return true;
  }

  private remove(path: string): void {
    const kids = this.children.get(path);
    if (kids !== undefined) {
      for (const child of [...kids]) this.remove(child);
      this.children.delete(path);
    }
    this.nodes.delete(path);
    if (path !== '') {
      const parent = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
      this.children.get(parent)?.delete(path);
    }
  }
}
