/**
 * Modification times. Node's utimes family takes seconds as a double (exact
 * only for whole seconds) and turns negative times into "now", while GNU
 * tar restores PAX mtimes to the nanosecond (and before 1970). Times Node
 * can set exactly are set on the spot; the others are collected and set at
 * the end by one helper process.
 */
import { EnvironmentError } from '../errors.js';
import { runTool } from './tools.js';

export interface Timestamp {
  /** Whole seconds since the epoch (may be negative). */
  sec: number;
  /** 0 ≤ nsec < 1e9. */
  nsec: number;
}

/**
 * Seconds to pass to fs.utimes so that it sets exactly `t`, or undefined
 * when Node cannot. Only whole seconds: Node 20 truncated the double to
 * microseconds, Node 26 keeps its rounding error in the nanoseconds
 * (2406932606.932606 s lands on …932606697 ns), so any fraction goes to the
 * exact path.
 */
export function nodeSeconds(t: Timestamp): number | undefined {
  if (t.sec < 0 || t.nsec !== 0) return undefined;
  return t.sec;
}

/** "@-1.500000000" style, as GNU touch -d understands it. */
export function epochText(t: Timestamp): string {
  if (t.sec >= 0 || t.nsec === 0) return `@${t.sec}.${String(t.nsec).padStart(9, '0')}`;
  return `@-${-t.sec - 1}.${String(1e9 - t.nsec).padStart(9, '0')}`;
}

/*
 * utimensat(AT_FDCWD, path, {UTIME_OMIT, mtime}, AT_SYMLINK_NOFOLLOW) for
 * each NUL-separated "path, sec, nsec" record on stdin. perl-base is
 * Essential on Debian and its syscall() needs no module; the atime is left
 * alone, as GNU tar leaves it.
 */
const PERL_UTIMENSAT = [
  'my ($nr, $omit) = @ARGV; $/ = "\\0";',
  'while (defined(my $path = <STDIN>)) {',
  '  chomp $path; chomp(my $sec = <STDIN>); chomp(my $nsec = <STDIN>);',
  '  syscall($nr, -100, $path, pack("q4", 0, $omit, $sec, $nsec), 0x100) == 0',
  '    or die "utimensat $path: $!\\n";',
  '}',
].join('\n');

const UTIME_OMIT = 2 ** 30 - 2;
const UTIMENSAT_SYSCALL: Partial<Record<NodeJS.Architecture, number>> = { x64: 280, arm64: 88 };

/** Paths (absolute, inside the unpack root) whose mtime Node cannot set exactly. */
export class ExactTimes {
  private readonly pending = new Map<string, Timestamp>();

  set(absPath: string, t: Timestamp): void {
    this.pending.set(absPath, t);
  }

  /**
   * `absPath` was replaced: its pending time must not land on the new inode,
   * but goes with the old one to `to`, another hard link to it, if any.
   */
  move(absPath: string, to: string | undefined): void {
    const time = this.pending.get(absPath);
    if (time === undefined) return;
    this.pending.delete(absPath);
    if (to !== undefined) this.pending.set(to, time);
  }

  /** The pending times, for someone else to apply (see EndScript). */
  entries(): IterableIterator<[string, Timestamp]> {
    return this.pending.entries();
  }

  /** Run last: anything created in a directory afterwards would change its mtime again. */
  async apply(signal?: AbortSignal): Promise<void> {
    if (this.pending.size === 0) return;
    const nr = UTIMENSAT_SYSCALL[process.arch];
    if (nr === undefined) return this.applyWithTouch(signal);
    const input = Buffer.from(
      [...this.pending].map(([path, t]) => `${path}\0${t.sec}\0${t.nsec}\0`).join(''),
    );
    const args = ['-e', PERL_UTIMENSAT, String(nr), String(UTIME_OMIT)];
    try {
      await runTool('perl', args, input, 'set exact file times', signal);
    } catch (err) {
      if (!(err instanceof EnvironmentError && err.code === 'TOOL_MISSING')) throw err;
      await this.applyWithTouch(signal);
    }
  }

  /** Portable and exact but one process per distinct time: the fallback only. */
  private async applyWithTouch(signal?: AbortSignal): Promise<void> {
    const byTime = new Map<string, string[]>();
    for (const [path, t] of this.pending) {
      const key = epochText(t);
      const paths = byTime.get(key);
      if (paths === undefined) byTime.set(key, [path]);
      else paths.push(path);
    }
    for (const [when, paths] of byTime) {
      const input = Buffer.from(paths.join('\0'));
      const args = ['-0', 'touch', '-h', '-d', when, '--'];
      await runTool('xargs', args, input, 'set exact file times', signal);
    }
  }
}
