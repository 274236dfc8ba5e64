/**
 * Node's compile cache for the CLI: V8's compiled code for the bundle, kept on
 * disk so the next run skips parsing and compiling it (most of a short
 * command's start-up). Root runs (the agent, process-image) keep it in
 * /var/cache/thinrelay/compile-cache, in a directory only root can write: a
 * cache is code the next root run executes, so never one in a shared /tmp.
 * NODE_COMPILE_CACHE=DIR puts it elsewhere (Node enables it before we run);
 * NODE_DISABLE_COMPILE_CACHE=1 turns it off. Other users' runs go without.
 * Best effort: a directory that cannot be made or is not root's only means
 * no cache, never an error.
 */
import { lstatSync, mkdirSync } from 'node:fs';
import nodeModule from 'node:module';

export const compileCacheParent = '/var/cache/thinrelay';
export const compileCacheDir = `${compileCacheParent}/compile-cache`;

/** The directory the cache was enabled in, or undefined when it is off. */
export function enableCliCompileCache(
  env: NodeJS.ProcessEnv = process.env,
  parent = compileCacheParent,
): string | undefined {
  if (env.NODE_DISABLE_COMPILE_CACHE !== undefined && env.NODE_DISABLE_COMPILE_CACHE !== '')
    return undefined;
  // Already on since Node's start-up, in the caller's directory.
  if (env.NODE_COMPILE_CACHE !== undefined && env.NODE_COMPILE_CACHE !== '')
    return nodeModule.getCompileCacheDir();
  if (process.geteuid?.() !== 0) return undefined;
  try {
    mkdirSync(parent, { recursive: true, mode: 0o700 });
    const st = lstatSync(parent);
    // Made by root, writable by root alone (not a link someone left there).
    if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) return undefined;
  } catch {
    return undefined; // read-only /var (a guest on a read-only root), no /var/cache: no cache.
  }
  return nodeModule.enableCompileCache(`${parent}/compile-cache`).directory;
}
