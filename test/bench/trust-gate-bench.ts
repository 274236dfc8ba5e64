/**
 * What the trust gate adds to an image end to end: `thinrelay process-image`
 * of small signed flat tars against the local S3 emulator, alternating a
 * host with `require` (an ECDSA key; the sidecar looked up, the download's
 * sha256 verified) and one with `off`, each image new to its host. Reports
 * the medians of both and their difference, and the gate's own time as the
 * pipeline logs it ("signature verified", `ms`: sidecar lookup included
 * unless the hold before the job already read it, and the verification).
 *
 * Run as root: npm run build && node dist/test/bench/trust-gate-bench.js [runs]
 * Figures, not assertions (each image must still become ready).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { okJson, runCli } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { logLines } from '../helpers/log-lines.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { KeyDir } from '../helpers/signing-keys.js';
import { smallRootfsTar } from '../helpers/tar-fixtures.js';

const runs = Number(process.argv[2] ?? 11);
const bucket = 'thinrelay-images';
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};
const fmt = (ms: number): string => `${ms.toFixed(1)} ms`;

const s3 = await startS3Emulator();
const keys = new KeyDir();
const stateDirs: string[] = [];
try {
  await s3.createBucket(bucket);
  const key = keys.ecdsa();
  const hostFor = (mode: 'off' | 'require'): NodeJS.ProcessEnv => {
    const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-gate-bench-${mode}-`));
    stateDirs.push(stateDir);
    const policyFile = keys.path(`policy-${mode}.json`);
    writeFileSync(
      policyFile,
      JSON.stringify({ signatures: { mode, publicKeys: [key.publicKeyPem] } }),
    );
    return {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_SIGNATURE_POLICY: policyFile,
    };
  };
  const hosts = { off: hostFor('off'), require: hostFor('require') };
  const wall = { off: [] as number[], require: [] as number[] };
  const gate: number[] = [];
  const load0 = loadavg()[0]!;
  // One warm-up each (pool files made, page cache), not counted.
  for (let i = -1; i < runs; i++) {
    for (const mode of i % 2 === 0
      ? (['off', 'require'] as const)
      : (['require', 'off'] as const)) {
      const imageKey = `bench/${mode}-${i + 1}.tar`;
      const tar = await smallRootfsTar(`${mode}-${i}`);
      await s3.putObject(bucket, imageKey, tar);
      await s3.putObject(bucket, `${imageKey}.sig`, keys.sign(key, tar));
      const t0 = performance.now();
      const r = await runCli(['process-image', '--s3-key', imageKey, '--json'], hosts[mode]);
      const ms = performance.now() - t0;
      okJson(r);
      if (i < 0) continue;
      wall[mode].push(ms);
      if (mode === 'require') {
        const line = logLines<{ msg?: string; ms?: number }>(r.stderr).find(
          (l) => l.msg === 'signature verified',
        );
        if (line?.ms === undefined) throw new Error(`no "signature verified" line: ${r.stderr}`);
        gate.push(line.ms);
      }
    }
  }
  console.log(
    `trust gate, process-image of a new small signed flat tar, ${runs} alternating runs each` +
      ` (${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average ${load0.toFixed(1)} → ${loadavg()[0]!.toFixed(1)})`,
  );
  console.log(`  off:      median ${fmt(median(wall.off))}`);
  console.log(`  require:  median ${fmt(median(wall.require))}`);
  console.log(
    `  added:    ${fmt(median(wall.require) - median(wall.off))} (difference of medians)`,
  );
  console.log(
    `  the gate as logged (verification, sidecar read by the hold): median ${fmt(median(gate))}, max ${fmt(Math.max(...gate))}`,
  );
} finally {
  for (const d of stateDirs) releaseStateDir(d);
  keys.remove();
  await s3.stop();
}
