/**
 * npm run bench (as root): thinrelay side by side with the obvious
 * alternative, in one run, on a real Debian rootfs. Prints a table and
 * writes bench/results.json. Not part of npm test: figures, not assertions.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  createReadStream,
} from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import { makeExt4, unpackMountOptions } from '../../host-agent/src/sys/mkfs.js';
import { compareTrees } from '../helpers/tree-compare.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { cliPath } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';

const execFileAsync = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const cacheDir = process.env.THINRELAY_BENCH_CACHE ?? '/var/cache/thinrelay-bench';
const mirror = process.env.THINRELAY_BENCH_MIRROR ?? 'http://deb.debian.org/debian';
const reps = Number(process.env.THINRELAY_BENCH_REPS ?? '3');
const volumeBytes = 1536 * 1024 ** 2;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A Debian bookworm minbase rootfs tar, built once with debootstrap and cached. */
function rootfsTar(): string {
  const tar = join(cacheDir, 'bookworm-minbase.tar');
  if (existsSync(tar)) return tar;
  mkdirSync(cacheDir, { recursive: true });
  if (spawnSync('sh', ['-c', 'command -v debootstrap']).status !== 0) {
    sh('apt-get', ['install', '-y', '-qq', 'debootstrap']);
  }
  const dir = join(cacheDir, 'rootfs');
  rmSync(dir, { recursive: true, force: true });
  console.error(`building ${tar} with debootstrap from ${mirror} (once, ~1 min)…`);
  sh('debootstrap', ['--variant=minbase', 'bookworm', dir, mirror]);
  sh('tar', ['--numeric-owner', '--xattrs', '-C', dir, '-cf', tar + '.partial', '.']);
  sh('mv', [tar + '.partial', tar]);
  rmSync(dir, { recursive: true, force: true });
  return tar;
}

interface FreshFs {
  mnt: string;
  /** Flush and unmount; returns the milliseconds that took. */
  flushAndUnmount(): number;
  dispose(): void;
}

/** The same fresh ext4 thinrelay unpacks into: same mkfs and mount options. */
async function freshFs(work: string, name: string): Promise<FreshFs> {
  // Let the host write back the previous run's dirty pages first, so they
  // do not compete with (and get billed to) whichever tool runs next.
  sh('sync', []);
  const file = join(work, `${name}.img`);
  const mnt = join(work, name);
  writeFileSync(file, '');
  execFileSync('truncate', ['-s', String(volumeBytes), file]);
  await makeExt4(file);
  const dev = sh('losetup', ['--find', '--show', file]).trim();
  mkdirSync(mnt, { recursive: true });
  sh('mount', ['-t', 'ext4', '-o', unpackMountOptions.join(','), dev, mnt]);
  let mounted = true;
  return {
    mnt,
    flushAndUnmount(): number {
      const t0 = performance.now();
      sh('sync', ['--file-system', mnt]);
      sh('umount', [mnt]);
      mounted = false;
      return performance.now() - t0;
    },
    dispose(): void {
      if (mounted) sh('umount', [mnt]);
      sh('losetup', ['-d', dev]);
      rmSync(file, { force: true });
      rmSync(mnt, { recursive: true, force: true });
    },
  };
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

interface UnpackFigures {
  gnuMs: number;
  thinrelayMs: number;
  ratio: number;
  /** Without Node's start-up: the unpack inside a running agent, plus flush + umount. */
  thinrelayInProcessMs: number;
  inProcessRatio: number;
  peakRssBytes: number;
  identicalToGnuTar: boolean;
  differences: string[];
}

async function benchUnpack(work: string, tar: string): Promise<UnpackFigures> {
  const child = join(here, 'unpack-child.js');
  const gnu: number[] = [];
  const ours: number[] = [];
  /** thinrelay's unpack as the running agent does it: Node already started. */
  const oursWarm: number[] = [];
  let rss = 0;
  readFileSync(tar); // warm the page cache for both
  for (let i = 0; i < reps; i++) {
    for (const who of i % 2 === 0 ? ['gnu', 'thinrelay'] : ['thinrelay', 'gnu']) {
      const fs = await freshFs(work, `${who}-${i}`);
      try {
        let ms: number;
        let inProcessMs = 0;
        if (who === 'gnu') {
          ms = time(() => sh('tar', ['--numeric-owner', '--xattrs', '-xpf', tar, '-C', fs.mnt]));
        } else {
          let out = '';
          ms = time(() => (out = sh(process.execPath, [child, tar, fs.mnt])));
          const report = JSON.parse(out) as { maxRssBytes: number; ms: number };
          rss = Math.max(rss, report.maxRssBytes);
          inProcessMs = report.ms;
        }
        const flush = fs.flushAndUnmount();
        (who === 'gnu' ? gnu : ours).push(ms + flush);
        if (who !== 'gnu') oursWarm.push(inProcessMs + flush);
      } finally {
        fs.dispose();
      }
    }
  }
  // Fidelity, once: both trees mounted side by side.
  const a = await freshFs(work, 'fidelity-gnu');
  const b = await freshFs(work, 'fidelity-thinrelay');
  let differences: string[];
  try {
    sh('tar', ['--numeric-owner', '--xattrs', '-xpf', tar, '-C', a.mnt]);
    sh(process.execPath, [child, tar, b.mnt]);
    differences = await compareTrees(a.mnt, b.mnt);
  } finally {
    a.dispose();
    b.dispose();
  }
  const gnuMs = median(gnu);
  const thinrelayMs = median(ours);
  const thinrelayInProcessMs = median(oursWarm);
  return {
    gnuMs,
    thinrelayMs,
    ratio: thinrelayMs / gnuMs,
    thinrelayInProcessMs,
    inProcessRatio: thinrelayInProcessMs / gnuMs,
    peakRssBytes: rss,
    identicalToGnuTar: differences.length === 0,
    differences: differences.slice(0, 20),
  };
}

interface EndToEndFigures {
  downloadThenTarMs: number;
  processImageMs: number;
  ratio: number;
  alreadyDoneMs: number;
  /** The same with --etag (as an event-driven caller knows it): no S3 request, no SDK. */
  alreadyDonePinnedMs: number;
}

async function benchEndToEnd(work: string, tar: string): Promise<EndToEndFigures> {
  const s3 = await startS3Emulator();
  const bucket = 'thinrelay-bench';
  const key = 'images/bookworm-minbase.tar';
  const env = {
    ...process.env,
    ...s3EnvFor(s3),
    THINRELAY_BUCKET: bucket,
    THINRELAY_RESERVE_BYTES: '0',
    THINRELAY_LOG_LEVEL: 'warn',
  };
  // Async: the emulator runs in this process and must keep serving meanwhile.
  let lastStdout = '';
  const node = async (args: string[]): Promise<number> => {
    const t0 = performance.now();
    ({ stdout: lastStdout } = await execFileAsync(process.execPath, args, {
      env,
      maxBuffer: 64 * 1024 ** 2,
    }));
    return performance.now() - t0;
  };
  try {
    await s3.createBucket(bucket);
    await s3.client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: createReadStream(tar),
        ContentLength: statSync(tar).size,
      }),
    );
    const alt: number[] = [];
    const ours: number[] = [];
    const already: number[] = [];
    const alreadyPinned: number[] = [];
    for (let i = 0; i < reps; i++) {
      // The obvious alternative: download to a file, then GNU tar into a fresh ext4.
      const fs = await freshFs(work, `e2e-gnu-${i}`);
      const file = join(work, 'download.tar');
      try {
        const ms =
          (await node([join(here, 'download-child.js'), bucket, key, file])) +
          time(() => sh('tar', ['--numeric-owner', '--xattrs', '-xpf', file, '-C', fs.mnt]));
        alt.push(ms + fs.flushAndUnmount());
      } finally {
        rmSync(file, { force: true });
        fs.dispose();
      }
      const stateDir = mkdtempSync(join(work, 'state-'));
      try {
        const run = ['process-image', '--s3-key', key, '--state-dir', stateDir];
        ours.push(await node([cliPath, ...run, '--json']));
        const { eTag } = JSON.parse(lastStdout) as { eTag: string };
        for (let j = 0; j < 3; j++) {
          already.push(await node([cliPath, ...run]));
          alreadyPinned.push(await node([cliPath, ...run, '--etag', eTag]));
        }
        await node([cliPath, 'pool', 'destroy', '--force', '--state-dir', stateDir]);
      } finally {
        releaseStateDir(stateDir);
      }
    }
    const downloadThenTarMs = median(alt);
    const processImageMs = median(ours);
    return {
      downloadThenTarMs,
      processImageMs,
      ratio: processImageMs / downloadThenTarMs,
      alreadyDoneMs: median(already),
      alreadyDonePinnedMs: median(alreadyPinned),
    };
  } finally {
    await s3.stop();
  }
}

interface StoreFigures {
  imagesJson10kMs: number;
  checkpointTransitionMeanMs: number;
  checkpointTransitionP99Ms: number;
}

function benchStore(work: string): StoreFigures {
  const stateDir = mkdtempSync(join(work, 'store-'));
  const store = StateStore.open(stateDir);
  store.tx(() => {
    for (let i = 0; i < 10_000; i++) {
      const image = store.images.upsert({
        bucket: 'b',
        key: `images/app-${i}.tar.gz`,
        versionId: null,
        eTag: `"${i.toString(16).padStart(32, '0')}"`,
        size: 200_000_000 + i,
      });
      store.images.setStatus(image.id, 'ready', { sha256: i.toString(16).padStart(64, '0') });
    }
  });
  const image = store.images.upsert({
    bucket: 'b',
    key: 'images/checkpoints.tar',
    versionId: null,
    eTag: '"c"',
    size: 1,
  });
  const samples: number[] = [];
  for (let j = 0; j < 200; j++) {
    const job = store.jobs.create(image.id, currentOwner(), ['a', 'b', 'c']);
    for (let p = 0; p < 3; p++) {
      for (const to of ['running', 'complete'] as const) {
        const t0 = performance.now();
        store.tx(() => store.jobs.setStep(job.id, p, to));
        samples.push(performance.now() - t0);
      }
    }
    store.jobs.setStatus(job.id, 'complete');
  }
  store.close();
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) {
    runs.push(
      time(() =>
        execFileSync(process.execPath, [cliPath, 'images', '--json', '--state-dir', stateDir], {
          stdio: ['ignore', 'pipe', 'pipe'],
          maxBuffer: 64 * 1024 ** 2,
        }),
      ),
    );
  }
  rmSync(stateDir, { recursive: true, force: true });
  samples.sort((a, b) => a - b);
  return {
    imagesJson10kMs: median(runs),
    checkpointTransitionMeanMs: samples.reduce((a, b) => a + b, 0) / samples.length,
    checkpointTransitionP99Ms: samples[Math.floor(samples.length * 0.99)]!,
  };
}

function machine(): Record<string, string> {
  const cpuModel = cpus()[0]?.model ?? 'unknown';
  // The floor under every whole-process figure: an empty Node process.
  const nodeStart = median(
    [1, 2, 3, 4, 5].map(() => time(() => sh(process.execPath, ['-e', '0']))),
  );
  const fsType = sh('findmnt', ['-n', '-o', 'FSTYPE', '--target', cacheDir]).trim();
  return {
    cpu: `${cpus().length} × ${cpuModel}`,
    memory: `${Math.round(totalmem() / 1024 ** 3)} GiB`,
    kernel: release(),
    node: `${process.version} (empty process: ${nodeStart.toFixed(0)} ms)`,
    tar: sh('tar', ['--version']).split('\n')[0] ?? '',
    filesystem: `${fsType} (backing files of the loop devices)`,
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('npm run bench needs root (loop devices, mkfs, mounts)');
  const tar = rootfsTar();
  const entries = sh('tar', ['-tf', tar])
    .split('\n')
    .filter((l) => l !== '').length;
  const work = mkdtempSync(join(cacheDir, 'run-'));
  try {
    const unpack = await benchUnpack(work, tar);
    const e2e = await benchEndToEnd(work, tar);
    const store = benchStore(work);
    const results = {
      date: new Date().toISOString(),
      machine: machine(),
      input: {
        rootfs: 'debootstrap --variant=minbase bookworm',
        tarBytes: statSync(tar).size,
        entries,
      },
      repetitions: reps,
      unpack,
      endToEnd: e2e,
      store,
    };
    const out = join(repoRoot, 'bench', 'results.json');
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(results, null, 2) + '\n');
    printTable(results);
    console.log(`\nwritten: ${out}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function printTable(r: {
  unpack: UnpackFigures;
  endToEnd: EndToEndFigures;
  store: StoreFigures;
  input: { tarBytes: number; entries: number };
  machine: Record<string, string>;
}): void {
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const rows: [string, string, string, string, string][] = [
    [
      'unpack into fresh ext4 (incl. flush + umount), whole process',
      `thinrelay ${s(r.unpack.thinrelayMs)}`,
      `GNU tar ${s(r.unpack.gnuMs)}`,
      r.unpack.ratio.toFixed(2),
      '≤ 1.25 (aim ≤ 1.0)',
    ],
    [
      'the same, inside a running agent (no Node start-up)',
      `thinrelay ${s(r.unpack.thinrelayInProcessMs)}`,
      `GNU tar ${s(r.unpack.gnuMs)}`,
      r.unpack.inProcessRatio.toFixed(2),
      '≤ 1.25 (aim ≤ 1.0)',
    ],
    [
      'process-image end to end from S3 emulator',
      `thinrelay ${s(r.endToEnd.processImageMs)}`,
      `download, then GNU tar ${s(r.endToEnd.downloadThenTarMs)}`,
      r.endToEnd.ratio.toFixed(2),
      '—',
    ],
    [
      'process-image, already done (whole process, HEAD to S3)',
      `${r.endToEnd.alreadyDoneMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'process-image --etag, already done (no S3 request)',
      `${r.endToEnd.alreadyDonePinnedMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'peak RSS during unpack',
      `${(r.unpack.peakRssBytes / 1024 ** 2).toFixed(0)} MiB`,
      '',
      '',
      '≤ 150 MB',
    ],
    [
      '`thinrelay images --json`, 10,000 images (whole process)',
      `${r.store.imagesJson10kMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'one checkpoint transition (mean / p99)',
      `${r.store.checkpointTransitionMeanMs.toFixed(2)} / ${r.store.checkpointTransitionP99Ms.toFixed(2)} ms`,
      '',
      '',
      '≤ 2 ms',
    ],
  ];
  console.log(
    `\nrootfs: ${(r.input.tarBytes / 1024 ** 2).toFixed(0)} MiB tar, ${r.input.entries} entries; result identical to GNU tar's: ${r.unpack.identicalToGnuTar}`,
  );
  console.log(`machine: ${Object.values(r.machine).join('; ')}\n`);
  console.log('| measure | thinrelay | alternative | ratio | target |\n|---|---|---|---|---|');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
}

await main();
