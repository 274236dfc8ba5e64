/**
 * npm run demo (as root): an embedded S3 emulator, a generated sample rootfs
 * uploaded to it, `thinrelay process-image` on the loop backend with its
 * progress, the files of the activated snapshot, then everything it created
 * removed again — also on Ctrl-C.
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { createS3Client } from '../source/s3-client.js';
import { buildSampleRootfs } from './sample-rootfs.js';

const cli = fileURLToPath(new URL('../../../cli/thinrelay.mjs', import.meta.url));
const bucket = 'thinrelay-demo';
const key = 'images/sample-rootfs.tar.gz';

function say(step: string, text: string): void {
  process.stdout.write(`\n\x1b[1m[${step}]\x1b[0m ${text}\n`);
}

function thinrelay(
  args: string[],
  env: NodeJS.ProcessEnv,
  capture = false,
): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], {
      env,
      stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'],
    });
    let stdout = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout }));
  });
}

function listTree(root: string): string[] {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const st = lstatSync(path);
      const rel = '/' + relative(root, path);
      const kind = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : '-';
      const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
      const target = st.isSymbolicLink() ? ` -> ${readlinkSync(path)}` : '';
      lines.push(
        `  ${kind}${mode} ${String(st.uid).padStart(4)}:${String(st.gid).padEnd(4)} ${String(st.size).padStart(9)}  ${rel}${target}`,
      );
      if (st.isDirectory() && name !== 'lost+found') walk(path);
    }
  };
  walk(root);
  return lines;
}

async function main(): Promise<number> {
  // Same as the CLI: keep the SDK's Node-version notice out of the demo's output.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  if (process.getuid?.() !== 0) {
    process.stderr.write(
      'thinrelay demo: needs root (loop devices, mkfs, mounts) — run: sudo npm run demo\n',
    );
    return 3;
  }
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-demo-'));
  const stateDir = join(work, 'state');
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory: join(work, 's3'),
  });
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    say(
      '5/5',
      'cleaning up: remove --force, gc, pool destroy, emulator stopped, temp files deleted',
    );
    await thinrelay(['pool', 'destroy', '--force'], env);
    await server.close();
    rmSync(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));

  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_BUCKET: bucket,
    THINRELAY_BACKEND: 'loop',
  };
  try {
    say('1/5', `embedded S3 emulator (s3rver) on ${endpoint}; state dir ${stateDir}`);
    const s3 = createS3Client({
      endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    const image = await buildSampleRootfs({
      gzip: true,
      payloadBytes: 32 * 1024 ** 2,
      seed: 'demo',
    });
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: image }));
    s3.destroy();
    say(
      '2/5',
      `uploaded a generated sample rootfs (${(image.length / 1024 ** 2).toFixed(1)} MiB, gzip) to s3://${bucket}/${key}`,
    );

    say('3/5', `thinrelay process-image --s3-key ${key}`);
    const t0 = performance.now();
    const first = await thinrelay(['process-image', '--s3-key', key], env, true);
    if (first.code !== 0) throw new Error(`process-image exited ${first.code}`);
    const device = first.stdout.trim();
    process.stdout.write(`  → ${device}  (${((performance.now() - t0) / 1000).toFixed(2)} s)\n`);
    const t1 = performance.now();
    await thinrelay(['process-image', '--s3-key', key], env, true);
    process.stdout.write(
      `  again (idempotent): same device, ${(performance.now() - t1).toFixed(0)} ms\n\n`,
    );
    await thinrelay(['show', key], env);

    say('4/5', `files in the activated snapshot ${device} (mounted read-only):`);
    const mnt = join(work, 'mnt');
    execFileSync('mkdir', ['-p', mnt]);
    execFileSync('mount', ['-o', 'ro', device, mnt]);
    try {
      process.stdout.write(listTree(mnt).join('\n') + '\n');
    } finally {
      execFileSync('umount', [mnt]);
    }
    return 0;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
