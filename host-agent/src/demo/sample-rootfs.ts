/**
 * A small, generated rootfs tarball (the demo's image, and the tests'):
 * directories, files with several modes and owners, absolute and relative
 * symlinks, a hardlink, a setuid binary, an empty directory, plus a payload
 * of deterministic pseudo-random bytes so progress and hashing have work.
 */
import { createHash } from 'node:crypto';
import { pack } from 'tar-stream';
import { gzipSync } from 'node:zlib';

export interface SampleRootfsOptions {
  /** Bytes of payload in /usr/lib/payload.bin. */
  payloadBytes?: number;
  gzip?: boolean;
  /** Changes the content (and so the sha256) without changing the layout. */
  seed?: string;
}

function payload(bytes: number, seed: string): Buffer {
  const out = Buffer.alloc(bytes);
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < bytes; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

export async function buildSampleRootfs(opts: SampleRootfsOptions = {}): Promise<Buffer> {
  const seed = opts.seed ?? 'thinrelay';
  const mtime = new Date('2026-01-01T00:00:00Z');
  const p = pack();
  const dir = (name: string, mode = 0o755): void => {
    p.entry({ name, type: 'directory', mode, mtime, uid: 0, gid: 0 });
  };
  const file = (name: string, body: string | Buffer, mode = 0o644, uid = 0, gid = 0): void => {
    p.entry({ name, type: 'file', mode, mtime, uid, gid }, body);
  };
  for (const d of [
    'bin',
    'etc',
    'usr',
    'usr/bin',
    'usr/lib',
    'var',
    'var/empty',
    'home',
    'home/app',
  ])
    dir(d);
  p.entry({ name: 'tmp', type: 'directory', mode: 0o1777, mtime, uid: 0, gid: 0 });
  file('etc/hostname', 'thinrelay-sample\n');
  file('etc/os-release', `NAME="thinrelay sample"\nID=thinrelay\nVERSION_ID="${seed}"\n`);
  file('usr/bin/hello', '#!/bin/sh\necho hello from a thinrelay image\n', 0o755);
  file('usr/bin/su-helper', '#!/bin/sh\n', 0o4755);
  file('home/app/config.json', '{"app":"demo"}\n', 0o640, 1000, 1000);
  file('usr/lib/payload.bin', payload(opts.payloadBytes ?? 4 * 1024 * 1024, seed));
  p.entry({ name: 'bin/hello', type: 'symlink', linkname: '../usr/bin/hello', mtime, mode: 0o777 });
  p.entry({
    name: 'etc/alternatives-hello',
    type: 'symlink',
    linkname: '/usr/bin/hello',
    mtime,
    mode: 0o777,
  });
  p.entry({
    name: 'usr/bin/hello-again',
    type: 'link',
    linkname: 'usr/bin/hello',
    mtime,
    mode: 0o755,
  });
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  const tar = Buffer.concat(chunks);
  return opts.gzip === true ? gzipSync(tar) : tar;
}

/** An archive that tries to write outside its root: every host must refuse it. */
export async function buildHostileArchive(): Promise<Buffer> {
  const p = pack();
  p.entry({ name: 'etc/motd', type: 'file', mode: 0o644 }, 'looks harmless\n');
  p.entry({ name: '../../escape', type: 'file', mode: 0o644 }, 'written outside the root\n');
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
