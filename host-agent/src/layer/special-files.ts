/**
 * Device nodes and fifos. Node has no mknod, so they are made by mknod and
 * mkfifo, batched through xargs (one process start for all of them instead
 * of one each), then given owner, mode and time like everything else. The
 * batch is flushed early when a later member needs one of its paths to
 * exist (a hard link to it, or a member replacing it); what is still pending
 * at the end is usually made by the EndScript's single perl run instead, and
 * flushed here only when that cannot be used.
 */
import type { MemberType } from './tar-header.js';
import { runToolSync } from './tools.js';

export interface SpecialFile {
  abs: string;
  /** Root-relative path, the model's key. */
  path: string;
  type: Extract<MemberType, 'char-device' | 'block-device' | 'fifo'>;
  devmajor: number;
  devminor: number;
}

export class SpecialFileBatch<T extends SpecialFile> {
  private pending: T[] = [];
  private readonly pendingPaths = new Set<string>();

  constructor(private readonly created: (file: T) => void) {}

  add(file: T): void {
    this.pending.push(file);
    this.pendingPaths.add(file.path);
  }

  isPending(path: string): boolean {
    return this.pendingPaths.has(path);
  }

  /** The pending files, in archive order, for someone else to create (see EndScript). */
  peek(): readonly T[] {
    return this.pending;
  }

  /** Creates every pending node, then calls `created` for each (in archive order). */
  flush(): void {
    if (this.pending.length === 0) return;
    const files = this.pending;
    this.pending = [];
    this.pendingPaths.clear();
    const devices = files.filter((f) => f.type !== 'fifo');
    const fifos = files.filter((f) => f.type === 'fifo');
    if (devices.length > 0) {
      const args = devices.flatMap((f) => [
        f.abs,
        f.type === 'char-device' ? 'c' : 'b',
        String(f.devmajor),
        String(f.devminor),
      ]);
      runToolSync(
        'xargs',
        ['-0', '-n', '4', 'mknod', '--'],
        nulSeparated(args),
        'create device nodes',
      );
    }
    if (fifos.length > 0) {
      const paths = fifos.map((f) => f.abs);
      runToolSync('xargs', ['-0', 'mkfifo', '--'], nulSeparated(paths), 'create fifos');
    }
    for (const file of files) this.created(file);
  }
}

function nulSeparated(args: string[]): Buffer {
  return Buffer.from(args.map((a) => `${a}\0`).join(''));
}
