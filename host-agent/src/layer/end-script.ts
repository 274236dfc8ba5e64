/**
 * The end of the unpack in one helper process: device nodes and fifos
 * (mknodat), owner and mode (fchownat without following, chmod), and
 * nanosecond times (utimensat without following), applied in the order
 * queued. Node has no mknod and no nanosecond utimes, and one perl run is
 * cheaper than a process per device node plus thousands of synchronous
 * calls from Node. perl-base is Essential on Debian and its syscall() needs
 * no module.
 */
import { runTool } from './tools.js';
import type { Timestamp } from './times.js';

interface Syscalls {
  mknodat: number;
  fchownat: number;
  utimensat: number;
}

const SYSCALLS: Partial<Record<NodeJS.Architecture, Syscalls>> = {
  x64: { mknodat: 259, fchownat: 260, utimensat: 280 },
  arm64: { mknodat: 33, fchownat: 54, utimensat: 88 },
};

const UTIME_OMIT = 2 ** 30 - 2;
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;

const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/*
 * NUL-separated records on stdin, each an op letter, a path and its fields:
 *   n path mode dev        mknodat(AT_FDCWD, path, mode, dev)
 *   o path uid gid mode    fchownat(..., AT_SYMLINK_NOFOLLOW), then chmod
 *   t path sec nsec        utimensat(..., {UTIME_OMIT, mtime}, AT_SYMLINK_NOFOLLOW)
 * Numbers read from stdin are strings: "+ 0" makes syscall() pass them as
 * integers rather than as pointers to their text.
 */
const PERL_SCRIPT = [
  'my ($mknodat, $fchownat, $utimensat, $omit, $cwd, $nofollow) = @ARGV; $/ = "\\0";',
  'sub f { my $v = <STDIN>; defined $v or die "truncated input\\n"; chomp $v; $v }',
  'while (defined(my $op = <STDIN>)) {',
  '  chomp $op; my $path = f();',
  '  if ($op eq "t") {',
  '    my ($sec, $nsec) = (f(), f());',
  '    syscall($utimensat + 0, $cwd + 0, $path, pack("q4", 0, $omit, $sec, $nsec), $nofollow + 0) == 0',
  '      or die "utimensat $path: $!\\n";',
  '  } elsif ($op eq "o") {',
  '    my ($uid, $gid, $mode) = (f(), f(), f());',
  '    syscall($fchownat + 0, $cwd + 0, $path, $uid + 0, $gid + 0, $nofollow + 0) == 0',
  '      or die "lchown $path: $!\\n";',
  '    chmod($mode + 0, $path) == 1 or die "chmod $path: $!\\n";',
  '  } elsif ($op eq "n") {',
  '    my ($mode, $dev) = (f(), f());',
  '    syscall($mknodat + 0, $cwd + 0, $path, $mode + 0, $dev + 0) == 0',
  '      or die "mknod $path: $!\\n";',
  '  } else { die "unknown op\\n" }',
  '}',
].join('\n');

const MAX_DEVICE_NUMBER = 0xffffffff;
const MAX_ID = 0xffffffff;

/** Linux's makedev (the 64-bit dev_t layout glibc uses), as a decimal string. */
function makedev(major: number, minor: number): string {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  const dev =
    ((ma & 0xfffff000n) << 32n) |
    ((ma & 0xfffn) << 8n) |
    ((mi & 0xffffff00n) << 12n) |
    (mi & 0xffn);
  return dev.toString();
}

export type SpecialType = 'char-device' | 'block-device' | 'fifo';

export class EndScript {
  private readonly parts: string[] = [];

  private constructor(private readonly syscalls: Syscalls) {}

  /** undefined where the system call numbers are not known: the caller uses the other tools. */
  static create(): EndScript | undefined {
    const syscalls = SYSCALLS[process.arch];
    return syscalls === undefined ? undefined : new EndScript(syscalls);
  }

  /**
   * False when the device numbers cannot be made into a dev_t (mknod(1)
   * refuses them too): the caller falls back to mknod for its message.
   */
  mknod(abs: string, type: SpecialType, devmajor: number, devminor: number): boolean {
    if (type === 'fifo') {
      this.parts.push('n', abs, String(S_IFIFO), '0');
      return true;
    }
    if (devmajor > MAX_DEVICE_NUMBER || devminor > MAX_DEVICE_NUMBER) return false;
    const kind = type === 'char-device' ? S_IFCHR : S_IFBLK;
    this.parts.push('n', abs, String(kind), makedev(devmajor, devminor));
    return true;
  }

  /**
   * False for ids beyond 32 bits, which the kernel would truncate: the
   * caller falls back to Node's lchown, which refuses them.
   */
  owner(abs: string, uid: number, gid: number, mode: number): boolean {
    if (uid > MAX_ID || gid > MAX_ID) return false;
    this.parts.push('o', abs, String(uid), String(gid), String(mode));
    return true;
  }

  time(abs: string, t: Timestamp): void {
    this.parts.push('t', abs, String(t.sec), String(t.nsec));
  }

  get empty(): boolean {
    return this.parts.length === 0;
  }

  /** Rejects with TOOL_MISSING when there is no perl (nothing has been applied then). */
  async run(signal?: AbortSignal): Promise<void> {
    if (this.parts.length === 0) return;
    const input = Buffer.from(this.parts.join('\0') + '\0');
    const { mknodat, fchownat, utimensat } = this.syscalls;
    const args = [
      '-e',
      PERL_SCRIPT,
      String(mknodat),
      String(fchownat),
      String(utimensat),
      String(UTIME_OMIT),
      String(AT_FDCWD),
      String(AT_SYMLINK_NOFOLLOW),
    ];
    await runTool('perl', args, input, 'apply file metadata', signal);
  }
}
