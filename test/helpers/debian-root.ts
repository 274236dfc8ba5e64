/**
 * A clean Debian 12 root for package install tests: `debootstrap
 * --variant=minbase bookworm` (no Node.js in it), kept as a tarball in
 * $THINRELAY_TEST_CACHE (default /var/cache/thinrelay-test) so later runs on
 * the same machine unpack it in seconds instead of bootstrapping again.
 * /dev, /dev/pts, /proc and /sys are bound in; a policy-rc.d exiting 101
 * keeps maintainer scripts from starting services. release() unmounts all.
 */
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';

export const testCacheDir = process.env.THINRELAY_TEST_CACHE ?? '/var/cache/thinrelay-test';
const rootTarball = join(testCacheDir, 'bookworm-minbase.tar');

/** The Debian mirror this machine's apt uses (its first deb URI). */
export function debianMirror(): string {
  const sources = '/etc/apt/sources.list.d/debian.sources';
  const text = existsSync(sources) ? readFileSync(sources, 'utf8') : '';
  return /^URIs:\s*(\S+)/m.exec(text)?.[1] ?? 'http://deb.debian.org/debian';
}

export interface DebianRoot {
  dir: string;
  /** Runs a command inside the root with a bare environment plus `env`. */
  run(args: string[], env?: Record<string, string>): SpawnSyncReturns<string>;
  /**
   * As run(), without blocking this process's event loop: for commands that
   * talk to an emulator running in the test process.
   */
  runAsync(
    args: string[],
    env?: Record<string, string>,
  ): Promise<{ status: number | null; stdout: string; stderr: string }>;
  /** As run(), throwing with its output when it exits non-zero. */
  ok(args: string[], env?: Record<string, string>): string;
  /** Unmounts the binds (safe to call twice, and after a failed setup). */
  release(): void;
}

const bare = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8' };

/**
 * The cached minbase root as a tarball (bootstrapped under `parent` once when
 * it is missing): also what image tests use as a real base layer.
 */
export function debianRootTarball(parent: string): string {
  if (!existsSync(rootTarball)) {
    const work = mkdtempSync(join(parent, 'bootstrap-'));
    execFileSync(
      'debootstrap',
      ['--variant=minbase', 'bookworm', join(work, 'root'), debianMirror()],
      { stdio: 'ignore' },
    );
    mkdirSync(testCacheDir, { recursive: true });
    execFileSync('tar', ['-C', join(work, 'root'), '-cf', `${rootTarball}.tmp`, '.']);
    renameSync(`${rootTarball}.tmp`, rootTarball);
    execFileSync('rm', ['-rf', work]);
  }
  return rootTarball;
}

/** A fresh root under `parent` (unpacked from the cache; bootstrapped once when it is missing). */
export function makeDebianRoot(parent: string): DebianRoot {
  debianRootTarball(parent);
  const dir = join(parent, 'root');
  mkdirSync(dir);
  execFileSync('tar', ['-C', dir, '-xf', rootTarball]);
  writeFileSync(join(dir, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  writeFileSync(join(dir, 'etc/resolv.conf'), readFileSync('/etc/resolv.conf'));

  const mounted: string[] = [];
  const release = (): void => {
    for (const m of mounted.splice(0).reverse()) spawnSync('umount', ['-l', m]);
  };
  try {
    for (const m of ['dev', 'dev/pts', 'proc', 'sys']) {
      execFileSync('mount', ['--bind', `/${m}`, join(dir, m)]);
      mounted.push(join(dir, m));
    }
  } catch (err) {
    release();
    throw err;
  }
  const run = (args: string[], env: Record<string, string> = {}): SpawnSyncReturns<string> =>
    spawnSync('chroot', [dir, ...args], {
      env: { ...bare, DEBIAN_FRONTEND: 'noninteractive', ...env },
      encoding: 'utf8',
      timeout: 300_000,
    });
  const runAsync = (args: string[], env: Record<string, string> = {}) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn('chroot', [dir, ...args], {
        env: { ...bare, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
  const ok = (args: string[], env: Record<string, string> = {}): string => {
    const r = run(args, env);
    if (r.status !== 0)
      throw new Error(`chroot ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  return { dir, run, runAsync, ok, release };
}
