/**
 * The `runtime` section of `npm run bench` (issue 21), run by bench.ts: the
 * CLI's cold start and peak RSS, and the rootfs unpack, on the pinned Node.js
 * runtime (the one running the bench) against Node 20 (/usr/bin/node), in the
 * same run, the two alternating which goes first. Both run the same built CLI
 * bundle and the same compiled unpacker; Node 20 gets its own better-sqlite3
 * build (an addon is compiled for one Node ABI), made once against Node 20's
 * own headers (/usr/include/node) and cached. Figures, not assertions; if
 * /usr/bin/node is not Node 20 the comparison column is skipped and says why.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliPath } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { smallRootfsTar } from '../helpers/tar-fixtures.js';
import { Children } from './children.js';
import { freshFs } from './fresh-fs.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const NODE20 = '/usr/bin/node';
/** Runs of each start-up measure per runtime (cheap: a fraction of a second each). */
const startRuns = 7;

/** One runtime's figures: medians of its runs; RSS is the peak over them. */
export interface RuntimeSide {
  version: string;
  path: string;
  emptyProcessMs: number;
  versionMs: number;
  versionRssBytes: number;
  /** process-image of an image already done, with --etag: no S3 request, no SDK. */
  alreadyDonePinnedMs: number;
  alreadyDonePinnedRssBytes: number;
  /** The same without --etag: loads the SDK, one HEAD to the S3 emulator. */
  alreadyDoneMs: number;
  alreadyDoneRssBytes: number;
  /** The bookworm rootfs into a fresh ext4, whole process, flush + umount included. */
  unpackMs: number;
  /** The same without Node's start-up (the unpack inside a running agent), flush included. */
  unpackInProcessMs: number;
  unpackRssBytes: number;
}

export interface RuntimeFigures {
  loadAverage: [number, number];
  pinned: RuntimeSide;
  node20: RuntimeSide | { skipped: string };
}

interface Runtime {
  version: string;
  node: string;
  /** The built CLI this runtime runs: the same bundle, beside a better-sqlite3 built for it. */
  cli: string;
}

const load = (): number => Number(loadavg()[0]!.toFixed(2));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 * 1024 ** 2,
    ...opts,
  });
}

/** npm's node-gyp: the one `npm run` names, else the one inside the npm on PATH. */
function nodeGyp(): string {
  const named = process.env.npm_config_node_gyp;
  if (named !== undefined && existsSync(named)) return named;
  // npm/bin/npm-cli.js → npm/node_modules/node-gyp (`npm root -g` would name the pinned
  // runtime's prefix, which has no npm).
  const npmDir = dirname(dirname(realpathSync(sh('sh', ['-c', 'command -v npm']).trim())));
  return join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
}

/**
 * Node 20 beside the pinned runtime: the same dist/cli bundle copied next to a
 * better-sqlite3 compiled for Node 20 (cached per Node and better-sqlite3
 * version; the first run compiles for a few minutes). Null with the reason
 * when there is no Node 20 to compare with.
 */
function node20Runtime(cacheDir: string): Runtime | string {
  if (!existsSync(NODE20)) return `no ${NODE20}: the Node 20 column is skipped`;
  const version = sh(NODE20, ['--version']).trim();
  if (!version.startsWith('v20.')) {
    return `${NODE20} is ${version}, not Node 20: the Node 20 column is skipped`;
  }
  const prefix = dirname(dirname(NODE20));
  if (!existsSync(join(prefix, 'include', 'node', 'common.gypi'))) {
    return `no Node 20 headers under ${prefix}/include/node (Debian's nodejs has them): the Node 20 column is skipped`;
  }
  const modules = join(repoRoot, 'node_modules');
  const sqliteVersion = (
    JSON.parse(readFileSync(join(modules, 'better-sqlite3', 'package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  const tree = join(cacheDir, `node-${version}-better-sqlite3-${sqliteVersion}`);
  const addonDir = join(tree, 'node_modules', 'better-sqlite3');
  if (!existsSync(join(addonDir, 'build', 'Release', 'better_sqlite3.node'))) {
    rmSync(tree, { recursive: true, force: true });
    for (const pkg of ['better-sqlite3', 'bindings', 'file-uri-to-path']) {
      cpSync(join(modules, pkg), join(tree, 'node_modules', pkg), {
        recursive: true,
        filter: (src) => !(pkg === 'better-sqlite3' && src === join(modules, pkg, 'build')),
      });
    }
    console.error(
      `building better-sqlite3 ${sqliteVersion} for Node ${version} against ${prefix}/include/node (once, a few minutes)…`,
    );
    // npm run exports the project's nodedir (the pinned runtime's headers): not for this build.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PATH: `${dirname(NODE20)}:${process.env.PATH ?? ''}`,
    };
    delete env.npm_config_nodedir;
    sh(NODE20, [nodeGyp(), 'rebuild', '--release', `--nodedir=${prefix}`], { cwd: addonDir, env });
  }
  // The bundle changes with every build: always this build's.
  const cliDir = join(tree, 'cli');
  rmSync(cliDir, { recursive: true, force: true });
  cpSync(dirname(cliPath), cliDir, { recursive: true });
  return { version, node: NODE20, cli: join(cliDir, basename(cliPath)) };
}

/** Medians and peaks of each measure, the runtimes alternating which runs first. */
export async function benchRuntime(
  work: string,
  cacheDir: string,
  rootfsTar: string,
  reps: number,
): Promise<RuntimeFigures> {
  const pinned: Runtime = { version: process.version, node: process.execPath, cli: cliPath };
  const other = node20Runtime(cacheDir);
  if (typeof other === 'string') console.error(other);
  const runtimes = typeof other === 'string' ? [pinned] : [pinned, other];
  const samples = new Map<Runtime, Record<string, number[]>>(runtimes.map((r) => [r, {}]));
  const add = (r: Runtime, name: string, value: number): void => {
    const s = samples.get(r)!;
    (s[name] ??= []).push(value);
  };
  const order = (i: number): Runtime[] => (i % 2 === 0 ? runtimes : [...runtimes].reverse());
  const children = new Children();
  const rssFile = join(work, 'runtime-rss');
  /** A whole process under /usr/bin/time: wall ms and peak RSS. */
  const timed = async (
    argv: string[],
    env: NodeJS.ProcessEnv = process.env,
  ): Promise<{ ms: number; rss: number; stdout: string }> => {
    const r = await children.ok('/usr/bin/time', ['-o', rssFile, '-f', '%M', ...argv], env);
    const rss = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) * 1024;
    return { ms: r.ms, rss, stdout: r.stdout };
  };
  const load0 = load();
  const s3 = await startS3Emulator();
  let stateDir: string | null = null;
  try {
    for (let i = 0; i < startRuns; i++) {
      for (const r of order(i)) {
        add(r, 'emptyProcessMs', (await children.ok(r.node, ['-e', '0'])).ms);
        const v = await timed([r.node, r.cli, '--version']);
        if (!v.stdout.includes(`node ${r.version},`)) {
          throw new Error(`${r.node} ${r.cli} --version printed ${v.stdout.trim()}`);
        }
        add(r, 'versionMs', v.ms);
        add(r, 'versionRssBytes', v.rss);
      }
    }

    // One small image processed once (on the pinned runtime); then process-image of it, done.
    const bucket = 'thinrelay-bench-runtime';
    const key = 'images/small.tar';
    await s3.createBucket(bucket);
    await s3.putObject(bucket, key, await smallRootfsTar('runtime-bench'));
    stateDir = mkdtempSync(join(work, 'runtime-state-'));
    const env = {
      ...process.env,
      ...s3EnvFor(s3),
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_LOG_LEVEL: 'warn',
    };
    const args = ['process-image', '--s3-key', key, '--state-dir', stateDir];
    const first = await children.ok(pinned.node, [pinned.cli, ...args, '--json'], env);
    const { eTag } = JSON.parse(first.stdout) as { eTag: string };
    for (let i = 0; i < startRuns; i++) {
      for (const r of order(i)) {
        const withTag = await timed([r.node, r.cli, ...args, '--etag', eTag], env);
        add(r, 'alreadyDonePinnedMs', withTag.ms);
        add(r, 'alreadyDonePinnedRssBytes', withTag.rss);
        const head = await timed([r.node, r.cli, ...args], env);
        add(r, 'alreadyDoneMs', head.ms);
        add(r, 'alreadyDoneRssBytes', head.rss);
      }
    }
    await children.ok(
      pinned.node,
      [pinned.cli, 'pool', 'destroy', '--force', '--state-dir', stateDir],
      env,
    );
    releaseStateDir(stateDir);
    stateDir = null;

    const unpackChild = join(here, 'unpack-child.js');
    readFileSync(rootfsTar); // the page cache warm for both
    for (let i = 0; i < reps; i++) {
      for (const r of order(i)) {
        const fs = await freshFs(work, `runtime-unpack-${i}`);
        try {
          const t0 = performance.now();
          const out = sh(r.node, [unpackChild, rootfsTar, fs.mnt]);
          const wholeMs = performance.now() - t0;
          const report = JSON.parse(out) as { ms: number; maxRssBytes: number };
          const flushMs = fs.flushAndUnmount();
          add(r, 'unpackMs', wholeMs + flushMs);
          add(r, 'unpackInProcessMs', report.ms + flushMs);
          add(r, 'unpackRssBytes', report.maxRssBytes);
        } finally {
          fs.dispose();
        }
      }
    }
  } finally {
    if (stateDir !== null) releaseStateDir(stateDir);
    children.close();
    await s3.stop();
  }
  const side = (r: Runtime): RuntimeSide => {
    const s = samples.get(r)!;
    const med = (name: string): number => median(s[name]!);
    const peak = (name: string): number => Math.max(...s[name]!);
    return {
      version: r.version,
      path: r.node,
      emptyProcessMs: med('emptyProcessMs'),
      versionMs: med('versionMs'),
      versionRssBytes: peak('versionRssBytes'),
      alreadyDonePinnedMs: med('alreadyDonePinnedMs'),
      alreadyDonePinnedRssBytes: peak('alreadyDonePinnedRssBytes'),
      alreadyDoneMs: med('alreadyDoneMs'),
      alreadyDoneRssBytes: peak('alreadyDoneRssBytes'),
      unpackMs: med('unpackMs'),
      unpackInProcessMs: med('unpackInProcessMs'),
      unpackRssBytes: peak('unpackRssBytes'),
    };
  };
  return {
    loadAverage: [load0, load()],
    pinned: side(pinned),
    node20: typeof other === 'string' ? { skipped: other } : side(other),
  };
}

type Row = [string, string, string, string, string];

/** measure | pinned runtime | Node 20 | pinned / Node 20 | target. */
export function runtimeRows(f: RuntimeFigures): Row[] {
  const ms = (n: number): string => `${n.toFixed(0)} ms`;
  const s = (n: number): string => `${(n / 1000).toFixed(2)} s`;
  const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MiB`;
  const measures: [string, (x: RuntimeSide) => number, (n: number) => string, string][] = [
    ['empty process (`node -e 0`)', (x) => x.emptyProcessMs, ms, '—'],
    ['CLI cold start: `thinrelay --version`', (x) => x.versionMs, ms, '≤ 1.0'],
    ['peak RSS of `thinrelay --version`', (x) => x.versionRssBytes, mib, '—'],
    [
      'CLI cold start: process-image --etag, already done',
      (x) => x.alreadyDonePinnedMs,
      ms,
      '≤ 1.0',
    ],
    ['peak RSS of the same', (x) => x.alreadyDonePinnedRssBytes, mib, '—'],
    ['process-image, already done (SDK, one HEAD)', (x) => x.alreadyDoneMs, ms, '≤ 1.0'],
    ['peak RSS of the same', (x) => x.alreadyDoneRssBytes, mib, '—'],
    ['unpack of the rootfs into fresh ext4, whole process', (x) => x.unpackMs, s, '≤ 1.0'],
    ['the same inside a running process', (x) => x.unpackInProcessMs, s, '—'],
    ['peak RSS during the unpack', (x) => x.unpackRssBytes, mib, '—'],
  ];
  const p = f.pinned;
  const o = 'skipped' in f.node20 ? null : f.node20;
  const rows = measures.map(([what, get, fmt, target]): Row => [
    `runtime: ${what}`,
    `Node ${p.version} ${fmt(get(p))}`,
    o === null ? '—' : `Node ${o.version} ${fmt(get(o))}`,
    o === null ? '—' : (get(p) / get(o)).toFixed(2),
    target,
  ]);
  rows[0]![0] += ` (load ${f.loadAverage.join('→')})`;
  if (o === null && 'skipped' in f.node20) rows[0]![2] = f.node20.skipped;
  return rows;
}
