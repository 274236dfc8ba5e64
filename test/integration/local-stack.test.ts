/**
 * `npm run stack` (its entry point, as a separate process): it prints export
 * lines and READY; the real AWS CLI uploads into it (a small PUT and a
 * multipart upload); the fan-out handler sends both events to a host queue
 * created as an agent creates it; the fleet commands read its fleet table;
 * SIGTERM stops it and frees its ports.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CreateQueueCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { queueNames } from '../../schema/fleet.js';
import { runCli } from '../helpers/cli.js';

const stackEntry = fileURLToPath(new URL('../../host-agent/src/demo/stack.js', import.meta.url));
// The Debian package (AWS CLI v2) when installed, else whatever `aws` is on PATH.
const aws = existsSync('/usr/bin/aws') ? '/usr/bin/aws' : 'aws';

let child: ChildProcess;
const env: Record<string, string> = {};
let bigETag = '';
let work: string;
/** The stack's own data directories (s3rver's files) in the temp directory. */
const stackDirs = (): string[] =>
  readdirSync(tmpdir()).filter((n) => /^thinrelay-stack-(?!test-)/.test(n));
let dirsBefore: string[];

before(async () => {
  dirsBefore = stackDirs();
  work = mkdtempSync(join(tmpdir(), 'thinrelay-stack-test-'));
  // As package.json's `stack` script runs it (s3rver's list tokens use DES).
  child = spawn(process.execPath, ['--openssl-legacy-provider', stackEntry], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stderr!.on('data', () => {});
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY in 30 s: ${out}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/^READY$/m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => reject(new Error(`stack exited ${code}: ${out}`)));
  });
  for (const m of out.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
});

after(() => {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

test('prints what agents and fleet commands need', () => {
  for (const name of [
    'AWS_ENDPOINT_URL_S3',
    'AWS_ENDPOINT_URL_SQS',
    'AWS_ENDPOINT_URL_DYNAMODB',
    'AWS_REGION',
    'AWS_ACCESS_KEY_ID',
    'AWS_SECRET_ACCESS_KEY',
    'THINRELAY_BUCKET',
    'THINRELAY_FLEET_TABLE',
    'THINRELAY_GROUP',
  ])
    assert.ok(env[name], `${name} exported`);
  assert.equal(env.THINRELAY_GROUP, 'default');
  for (const v of ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL_SQS', 'AWS_ENDPOINT_URL_DYNAMODB'])
    assert.match(env[v]!, /^http:\/\/127\.0\.0\.1:\d+$/);
});

test('aws s3 cp (PUT and multipart) reaches a host queue through the fan-out handler', async () => {
  const sqs = new SQSClient({
    region: env.AWS_REGION,
    endpoint: env.AWS_ENDPOINT_URL_SQS,
    credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
  });
  try {
    const { QueueUrl } = await sqs.send(
      new CreateQueueCommand({ QueueName: queueNames.hostQueue('thinrelay', 'default', 'h1') }),
    );
    const small = join(work, 'small.tar');
    const big = join(work, 'big.tar');
    writeFileSync(small, 'not really a tar');
    // Over the CLI's 8 MiB threshold: a multipart upload (CompleteMultipartUpload event).
    writeFileSync(big, Buffer.alloc(9 * 1024 * 1024, 7));
    const run = promisify(execFile);
    const cliEnv = { ...process.env, ...env };
    for (const [file, key] of [
      [small, 'images/small.tar'],
      [big, 'images/big.tar'],
    ] as const) {
      await run(
        aws,
        [
          '--endpoint-url',
          env.AWS_ENDPOINT_URL_S3!,
          's3',
          'cp',
          '--only-show-errors',
          file,
          `s3://${env.THINRELAY_BUCKET}/${key}`,
        ],
        { env: cliEnv },
      );
    }
    const head = await run(
      aws,
      [
        '--endpoint-url',
        env.AWS_ENDPOINT_URL_S3!,
        's3api',
        'head-object',
        '--bucket',
        env.THINRELAY_BUCKET!,
        '--key',
        'images/big.tar',
      ],
      { env: cliEnv },
    );
    bigETag = (JSON.parse(head.stdout) as { ETag: string }).ETag.replace(/"/g, '');

    const events = new Map<string, { eTag: string; kind: string }>();
    const deadline = Date.now() + 20_000;
    while (events.size < 2 && Date.now() < deadline) {
      const out = await sqs.send(
        new ReceiveMessageCommand({ QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
      );
      for (const m of out.Messages ?? []) {
        const e = JSON.parse(m.Body!) as { key: string; eTag: string; kind: string };
        events.set(e.key, e);
      }
    }
    assert.deepEqual([...events.keys()].sort(), ['images/big.tar', 'images/small.tar']);
    assert.equal(events.get('images/big.tar')!.kind, 'image.put');
    assert.equal(events.get('images/big.tar')!.eTag, bigETag);
  } finally {
    sqs.destroy();
  }
});

test('the fleet table has its deployment item and the fan-out records rollouts in it', async () => {
  const hosts = await runCli(['fleet', 'hosts', '--json'], env);
  assert.equal(hosts.code, 0, hosts.stderr);
  assert.deepEqual((JSON.parse(hosts.stdout) as { hosts: unknown[] }).hosts, []);
  // The fan-out recorded the rollout (FLEET_TABLE): its version and the queue it went to.
  const status = await runCli(['fleet', 'status', 'images/big.tar', '--json'], env);
  assert.equal(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout) as {
    groups: string[];
    outcome: string;
    etag: string;
    etagSource: string;
    hosts: { host: string; liveness: string; expected: boolean }[];
  };
  assert.deepEqual(s.groups, ['default']);
  assert.equal(s.etagSource, 'rollout');
  assert.equal(s.etag, bigETag);
  assert.deepEqual(s.hosts, [
    {
      host: 'h1',
      group: 'default',
      state: 'pending',
      reason: null,
      message: null,
      etag: null,
      signer: null,
      verifiedAt: null,
      updatedAt: null,
      liveness: 'unregistered',
      expected: false,
    },
  ]);
  assert.equal(s.outcome, 'no-hosts');
});

test('SIGTERM stops it (exit 143), closes its ports and removes its data', async () => {
  assert.equal(stackDirs().length, dirsBefore.length + 1, 'the running stack has its data dir');
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 143);
  assert.deepEqual(stackDirs(), dirsBefore);
  for (const v of ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL_SQS', 'AWS_ENDPOINT_URL_DYNAMODB']) {
    const port = Number(new URL(env[v]!).port);
    const refused = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), r(false)));
      s.once('error', () => r(true));
    });
    assert.ok(refused, `${v} closed`);
  }
});
