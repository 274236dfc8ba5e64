/**
 * The filesystem operations of the unpack, all synchronous: tens of
 * thousands of tiny calls cost more as threadpool round trips than they
 * block. Callers have already checked the path against the model; the flags
 * here (O_EXCL | O_NOFOLLOW, lchown, lutimes) are defence in depth.
 */
import fs from 'node:fs';
import { ImageError, type ImageFailureCode } from '../errors.js';
import { printable } from './printable.js';

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
const CREATE_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW;

export interface Ownership {
  uid: number;
  gid: number;
  /** Permission bits including setuid/setgid/sticky. */
  mode: number;
}

const errnoCodes: Record<string, ImageFailureCode> = {
  ENOSPC: 'VOLUME_FULL',
  EDQUOT: 'VOLUME_FULL',
  ENAMETOOLONG: 'LIMIT_PATH_LENGTH',
  ELOOP: 'ARCHIVE_UNSAFE_LINK',
  EEXIST: 'ARCHIVE_CONFLICT',
  // ext4 allows 65,000 links to one inode: an image that needs more fails on every host.
  EMLINK: 'LIMIT_LINK_COUNT',
};

/** An fs error as an ImageError naming the member and the operation. */
export function fsFailure(err: unknown, op: string, name: string): ImageError {
  const errno = (err as NodeJS.ErrnoException | null)?.code;
  const code = (errno !== undefined ? errnoCodes[errno] : undefined) ?? 'STORAGE_FAILED';
  const hint = code === 'VOLUME_FULL' ? 'set THINRELAY_VOLUME_SIZE larger' : undefined;
  return new ImageError(
    code,
    `member ${printable(name)}: ${op} failed (${errno ?? String(err)})`,
    hint,
    {
      cause: err,
    },
  );
}

export function createFile(abs: string, mode: number, name: string): number {
  try {
    return fs.openSync(abs, CREATE_FLAGS, mode);
  } catch (err) {
    throw fsFailure(err, 'create', name);
  }
}

export function writeAll(fd: number, chunk: Buffer, name: string): void {
  try {
    let done = 0;
    while (done < chunk.length) done += fs.writeSync(fd, chunk, done);
  } catch (err) {
    throw fsFailure(err, 'write', name);
  }
}

/**
 * chmod after chown: chown clears setuid/setgid. The caller says which of
 * the two the file needs. `mtime` undefined means a time Node cannot set
 * exactly; the caller sets it later.
 */
export function finishFile(
  fd: number,
  owner: Ownership,
  chown: boolean,
  chmod: boolean,
  atime: number,
  mtime: number | undefined,
  name: string,
): void {
  try {
    if (chown) fs.fchownSync(fd, owner.uid, owner.gid);
    if (chmod) fs.fchmodSync(fd, owner.mode);
    if (mtime !== undefined) fs.futimesSync(fd, atime, mtime);
  } catch (err) {
    fs.closeSync(fd);
    throw fsFailure(err, 'set owner, mode and time of', name);
  }
  closeFile(fd, name);
}

export function closeFile(fd: number, name: string): void {
  try {
    fs.closeSync(fd);
  } catch (err) {
    throw fsFailure(err, 'close', name);
  }
}

export function makeDirectory(abs: string, mode: number, name: string): void {
  try {
    fs.mkdirSync(abs, mode);
  } catch (err) {
    throw fsFailure(err, 'mkdir', name);
  }
}

export function makeSymlink(target: string, abs: string, name: string): void {
  try {
    fs.symlinkSync(target, abs);
  } catch (err) {
    throw fsFailure(err, 'symlink', name);
  }
}

export function makeHardlink(absTarget: string, abs: string, name: string): void {
  try {
    fs.linkSync(absTarget, abs);
  } catch (err) {
    throw fsFailure(err, 'link', name);
  }
}

/** Removes a non-directory that a later member replaces (GNU tar unlinks it too). */
export function removeFile(abs: string, name: string): void {
  try {
    fs.unlinkSync(abs);
  } catch (err) {
    throw fsFailure(err, 'remove the earlier entry for', name);
  }
}

/**
 * Owner, mode and time by path, never following a final symlink (no lchmod
 * on Linux: callers only pass modes for non-symlinks). For entries made
 * without an fd: symlinks, device nodes, fifos and, at the end, directories.
 */
export function setPathMetadata(
  abs: string,
  owner: Ownership,
  setMode: boolean,
  atime: number,
  mtime: number | undefined,
  name: string,
): void {
  try {
    fs.lchownSync(abs, owner.uid, owner.gid);
    if (setMode) fs.chmodSync(abs, owner.mode);
    if (mtime !== undefined) fs.lutimesSync(abs, atime, mtime);
  } catch (err) {
    throw fsFailure(err, 'set owner, mode and time of', name);
  }
}
