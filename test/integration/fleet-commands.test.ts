/**
 * `thinrelay fleet status|hosts|wait|forget` as an operator runs them (the
 * bundled CLI, a child process) against a fleet table in dynalite, an S3
 * emulator holding the image and an SQS emulator holding host queues. Items
 * are written directly, as agents and the fan-out Lambda write them.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { after, before, test } from 'node:test';
import { ListQueuesCommand } from '@aws-sdk/client-sqs';
import { queueNames } from '../../schema/fleet.js';
import { cliPath, runCli } from '../helpers/cli.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import {
  deploymentConfig,
  hostImageItem,
  hostItem,
  putItems,
  rolloutItem,
} from '../helpers/fleet-items.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';

let dynamo: DynamoEmulator;
let s3: S3Emulator;
let sqs: SqsEmulator;
let n = 0;
const bucket = 'thinrelay-images';

before(async () => {
  [dynamo, s3, sqs] = await Promise.all([
    startDynamoEmulator(),
    startS3Emulator(),
    startSqsEmulator(),
  ]);
  await s3.createBucket(bucket);
});
after(async () => {
  await Promise.all([dynamo.stop(), s3.stop(), sqs.stop()]);
});

function envFor(table: string): NodeJS.ProcessEnv {
  return {
    ...s3EnvFor(s3),
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_ENDPOINT_URL_SQS: sqs.endpoint,
    THINRELAY_FLEET_TABLE: table,
    THINRELAY_LOG_LEVEL: 'warn',
  };
}

async function fleet(items: object[]): Promise<{ table: string; env: NodeJS.ProcessEnv }> {
  const table = `fleet-cli-${++n}`;
  await createFleetTable(dynamo.client, table);
  await putItems(dynamo.client, table, [deploymentConfig({ bucket }), ...items]);
  return { table, env: envFor(table) };
}

const jsonLines = (out: string): Record<string, unknown>[] =>
  out
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** The CLI as a child process whose first stdout line can be awaited. */
function spawnCli(
  args: string[],
  env: NodeJS.ProcessEnv,
): {
  firstLine: Promise<void>;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
} {
  const child = spawn(process.execPath, [cliPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let seen: () => void = () => {};
  const firstLine = new Promise<void>((res) => (seen = res));
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (stdout.includes('\n')) seen();
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((res) =>
    child.on('close', (code) => {
      seen();
      res({ code, stdout, stderr });
    }),
  );
  return { firstLine, done };
}

const escape = {
  reasonCode: 'ARCHIVE_PATH_ESCAPE',
  message: 'member "../../escape" leaves the image root',
};

test('fleet status KEY --json: per-host states, reasons and counts', async () => {
  const key = 'images/app.tar';
  const { env } = await fleet([
    hostItem('a'),
    hostItem('b'),
    hostItem('c'),
    hostImageItem('a', key, 'ready'),
    hostImageItem('b', key, 'ready'),
    hostImageItem('c', key, 'failed', escape),
  ]);
  const r = await runCli(['fleet', 'status', key, '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    key: string;
    etag: string;
    hosts: { host: string; group: string; state: string; reason: string | null }[];
    counts: Record<string, number>;
    outcome: string;
  };
  assert.equal(out.key, key);
  assert.equal(out.etag, 'etag-1');
  // One field name for an ETag in the whole document, host rows included (docs/operating-a-host.md "JSON output").
  assert.doesNotMatch(r.stdout, /"eTag"/);
  assert.deepEqual(
    (out.hosts as unknown as { etag: string }[]).map((h) => h.etag),
    ['etag-1', 'etag-1', 'etag-1'],
  );
  assert.deepEqual(
    out.hosts.map((h) => [h.host, h.group, h.state, h.reason]),
    [
      ['a', 'default', 'ready', null],
      ['b', 'default', 'ready', null],
      ['c', 'default', 'failed', 'ARCHIVE_PATH_ESCAPE'],
    ],
  );
  assert.equal(out.counts.expected, 3);
  assert.equal(out.counts.ready, 2);
  assert.equal(out.counts.failed, 1);
  assert.equal(out.outcome, 'failed');

  const text = await runCli(['fleet', 'status', key], env);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /ready 2\/3 .* failed 1/);
  assert.match(text.stdout, /c +default +failed +\[ARCHIVE_PATH_ESCAPE\] member/);

  const all = await runCli(['fleet', 'status'], env);
  assert.equal(all.code, 0, all.stderr);
  assert.match(all.stdout, /images\/app\.tar +etag-1 +2\/3 +0 +0 +1 +failed/);
  assert.match(all.stdout, /images\/app\.tar on c \(default\): \[ARCHIVE_PATH_ESCAPE\]/);
});

test('fleet status: who signed each version and when, awaiting-signature and untrusted with their reasons', async () => {
  const key = 'images/signed.tar';
  const verifiedAt = Date.parse('2026-12-06T23:00:00.000Z');
  const signer = 'sha256:5f0c9a1b (ecdsa-p256)';
  const { env } = await fleet([
    hostItem('a'),
    hostItem('b'),
    hostItem('c'),
    hostItem('d'),
    hostImageItem('a', key, 'ready', { signer, verifiedAt }),
    hostImageItem('b', key, 'awaiting-signature', {
      reasonCode: 'SIGNATURE_MISSING',
      message: 'waiting for images/signed.tar.sig or .sigstore.json until 2026-12-07T00:00:00.000Z',
    }),
    hostImageItem('c', key, 'failed', {
      reasonCode: 'SIGNATURE_INVALID',
      message: 'images/signed.tar.sig does not verify with sha256:aa11 (ed25519)',
    }),
    hostImageItem('d', key, 'untrusted', {
      reasonCode: 'SIGNATURE_INVALID',
      message: 'signed by sha256:77ee (ecdsa-p256), no longer in the policy',
    }),
    // Written by an agent from before signatures: no signer fields at all.
    hostImageItem('a', 'images/old.tar', 'ready'),
  ]);
  const r = await runCli(['fleet', 'status', key, '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    hosts: {
      host: string;
      state: string;
      reason: string | null;
      signer: string | null;
      verifiedAt: string | null;
    }[];
    counts: Record<string, number>;
    outcome: string;
  };
  assert.deepEqual(
    out.hosts.map((h) => [h.host, h.state, h.reason, h.signer, h.verifiedAt]),
    [
      ['a', 'ready', null, signer, '2026-12-06T23:00:00.000Z'],
      ['b', 'awaiting-signature', 'SIGNATURE_MISSING', null, null],
      ['c', 'failed', 'SIGNATURE_INVALID', null, null],
      ['d', 'untrusted', 'SIGNATURE_INVALID', null, null],
    ],
  );
  assert.equal(out.counts.awaitingSignature, 1);
  assert.equal(out.counts.untrusted, 1);
  assert.equal(out.counts.failed, 1);
  // Still waiting on b: not finished either way.
  assert.equal(out.outcome, 'in-progress');

  const text = await runCli(['fleet', 'status', key], env);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /ready 1\/4 .* awaiting-signature 1 +failed 1 +untrusted 1/);
  assert.match(text.stdout, /a +default +ready +- +sha256:5f0c9a1b \(ecdsa-p256\), verified /);
  assert.match(text.stdout, /b +default +awaiting-signature +\[SIGNATURE_MISSING\] waiting for/);
  assert.match(text.stdout, /d +default +untrusted +\[SIGNATURE_INVALID\] signed by/);

  const all = await runCli(['fleet', 'status'], env);
  assert.equal(all.code, 0, all.stderr);
  assert.match(all.stdout, /AWAITING SIGNATURE +UNTRUSTED +FAILED +OUTCOME/);
  assert.match(all.stdout, /images\/signed\.tar +etag-1 +1\/4 +0 +0 +1 +1 +1 +in-progress/);
  assert.match(all.stdout, /images\/signed\.tar on c \(default\): \[SIGNATURE_INVALID\]/);
  assert.match(
    all.stdout,
    /untrusted .*:\n +images\/signed\.tar on d \(default\): \[SIGNATURE_INVALID\]/,
  );
  assert.match(
    all.stdout,
    /awaiting a signature:\n +images\/signed\.tar on b \(default\): \[SIGNATURE_MISSING\]/,
  );
  assert.match(
    all.stdout,
    /signers:\n +images\/signed\.tar on a: sha256:5f0c9a1b \(ecdsa-p256\), verified 2026-12-06T23:00:00\.000Z/,
  );

  const hosts = await runCli(['fleet', 'hosts', '--json'], env);
  assert.equal(hosts.code, 0, hosts.stderr);
  const rows = (JSON.parse(hosts.stdout) as { hosts: Record<string, unknown>[] }).hosts;
  assert.deepEqual(
    rows.map((h) => [h.host, h.ready, h.awaitingSignature, h.untrusted, h.failed]),
    [
      ['a', 2, 0, 0, 0],
      ['b', 0, 1, 0, 0],
      ['c', 0, 0, 0, 1],
      ['d', 0, 0, 1, 0],
    ],
  );
});

test('fleet hosts --json: liveness, image counts, pool usage, DLQ depth', async () => {
  const pool = {
    dataUsedBytes: 1024 ** 3,
    dataTotalBytes: 4 * 1024 ** 3,
    metadataUsedBytes: 1,
    metadataTotalBytes: 100,
  };
  const { env } = await fleet([
    hostItem('a', { pool, dlqDepth: 2 }),
    hostItem('old', { lastSeenAt: Date.now() - 3_600_000 }),
    hostImageItem('a', 'images/x.tar', 'ready'),
    hostImageItem('a', 'images/y.tar', 'failed', escape),
  ]);
  const r = await runCli(['fleet', 'hosts', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as {
    hosts: Record<string, unknown>[];
    counts: Record<string, number>;
  };
  assert.deepEqual(
    out.hosts.map((h) => [h.host, h.liveness, h.ready, h.failed, h.dlqDepth]),
    [
      ['a', 'live', 1, 1, 2],
      ['old', 'stale', 0, 0, 0],
    ],
  );
  assert.deepEqual(out.hosts[0]!.pool, pool);
  assert.deepEqual(out.counts, { hosts: 2, live: 1, stale: 1, gone: 0 });
  const text = await runCli(['fleet', 'hosts'], env);
  assert.match(text.stdout, /^a +default +live +\d+s ago +1 +1 +1\.0 GiB 25% +1% +2/m);
});

test('fleet wait: exit 1 when every live host reported and one failed, 0 once fixed, 124 on timeout', async () => {
  const key = 'images/hostile.tar';
  const { table, env } = await fleet([
    hostItem('a'),
    hostItem('b'),
    hostItem('c'),
    hostItem('stale', { lastSeenAt: Date.now() - 3_600_000 }),
    hostImageItem('a', key, 'ready'),
    hostImageItem('b', key, 'ready'),
    hostImageItem('c', key, 'processing'),
  ]);
  // Still processing on c: the timeout passes.
  let r = await runCli(
    ['fleet', 'wait', key, '--etag', 'etag-1', '--timeout', '1s', '--interval', '200ms'],
    env,
  );
  assert.equal(r.code, 124, r.stderr);
  assert.match(r.stderr, /\[TIMEOUT\] images\/hostile\.tar not ready/);
  const progress = jsonLines(r.stdout);
  assert.equal(progress[0]!.outcome, 'in-progress');
  assert.equal(progress.at(-1)!.result, 'timeout');

  // c fails while wait follows: exit 1 with the reason.
  const waiting = runCli(
    ['fleet', 'wait', key, '--etag', 'etag-1', '--timeout', '30s', '--interval', '200ms'],
    env,
  );
  await new Promise((res) => setTimeout(res, 800));
  await putItems(dynamo.client, table, [hostImageItem('c', key, 'failed', escape)]);
  r = await waiting;
  assert.equal(r.code, 1, r.stderr);
  const end = jsonLines(r.stdout).at(-1) as {
    result: string;
    hosts: { host: string; reason: string }[];
  };
  assert.equal(end.result, 'failed');
  assert.equal(end.hosts.find((h) => h.host === 'c')!.reason, 'ARCHIVE_PATH_ESCAPE');

  // The object is fixed (a new version): wait for it exits 0 when all three have it.
  await putItems(dynamo.client, table, [
    rolloutItem(key, '0002', [], { eTag: 'etag-2' }),
    hostImageItem('a', key, 'ready', { eTag: 'etag-2' }),
    hostImageItem('b', key, 'ready', { eTag: 'etag-2' }),
    hostImageItem('c', key, 'ready', { eTag: 'etag-2' }),
  ]);
  r = await runCli(['fleet', 'wait', key, '--etag', 'etag-2', '--timeout', '10s'], env);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(jsonLines(r.stdout).at(-1)!.result, 'ready');
});

test('fleet wait without --etag follows the object now in the bucket, not an older version', async () => {
  const key = 'images/race.tar';
  const { eTag } = await s3.putObject(bucket, key, 'version two');
  // Hosts still hold version one and no rollout of version two is recorded yet.
  const { table, env } = await fleet([
    hostItem('a'),
    hostImageItem('a', key, 'ready', { eTag: 'old-version' }),
    rolloutItem(key, '0001', [], { eTag: 'old-version' }),
  ]);
  const waiting = spawnCli(['fleet', 'wait', key, '--timeout', '20s', '--interval', '200ms'], env);
  // Once wait has seen the old version, the host reports the new one.
  await waiting.firstLine;
  await putItems(dynamo.client, table, [
    hostImageItem('a', key, 'ready', { eTag: eTag.replace(/"/g, '') }),
  ]);
  const r = await waiting.done;
  assert.equal(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  assert.equal(lines[0]!.outcome, 'in-progress', 'the old version does not count');
  assert.equal(lines[0]!.etagSource, 'object');
  assert.equal(lines.at(-1)!.etag, eTag.replace(/"/g, ''));

  const missing = await runCli(['fleet', 'wait', 'images/nothing.tar', '--timeout', '2s'], env);
  assert.equal(missing.code, 4, missing.stderr);
  assert.match(
    missing.stderr,
    /\[KEY_NOT_FOUND\] no object s3:\/\/thinrelay-images\/images\/nothing\.tar/,
  );
});

test('fleet forget: deletes the host queue, its DLQ and its items; refuses a live host without --force', async () => {
  const host = await sqs.createQueue(queueNames.hostQueue('thinrelay', 'default', 'old-1'), {
    dlq: { name: queueNames.dlq('thinrelay', 'default', 'old-1'), maxReceiveCount: 5 },
  });
  const other = await sqs.createQueue(queueNames.hostQueue('thinrelay', 'default', 'old-10'));
  const { env } = await fleet([
    hostItem('old-1', {
      lastSeenAt: Date.now() - 3_600_000,
      queueUrl: host.url,
      dlqUrl: host.dlqUrl!,
    }),
    hostItem('live-1'),
    hostImageItem('old-1', 'images/a.tar', 'ready'),
    hostImageItem('old-1', 'images/b.tar', 'failed', escape),
  ]);
  const r = await runCli(['fleet', 'forget', 'old-1', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { queuesDeleted: string[]; itemsDeleted: number };
  assert.deepEqual(out.queuesDeleted.sort(), [host.dlqUrl, host.url].sort());
  assert.equal(out.itemsDeleted, 3);
  const left = await sqs.client.send(new ListQueuesCommand({ QueueNamePrefix: 'thinrelay-' }));
  assert.ok(!(left.QueueUrls ?? []).includes(host.url));
  assert.ok((left.QueueUrls ?? []).includes(other.url), 'old-10 is another host');
  const hosts = JSON.parse((await runCli(['fleet', 'hosts', '--json'], env)).stdout) as {
    hosts: { host: string }[];
  };
  assert.deepEqual(
    hosts.hosts.map((h) => h.host),
    ['live-1'],
  );

  const again = await runCli(['fleet', 'forget', 'old-1'], env);
  assert.equal(again.code, 4, again.stderr);
  assert.match(again.stderr, /\[HOST_NOT_FOUND\]/);

  const live = await runCli(['fleet', 'forget', 'live-1'], env);
  assert.equal(live.code, 2, live.stderr);
  assert.match(live.stderr, /\[HOST_LIVE\] host live-1 is live/);
  const forced = await runCli(['fleet', 'forget', 'live-1', '--force'], env);
  assert.equal(forced.code, 0, forced.stderr);
  assert.match(forced.stdout, /forgot host live-1: 0 queues deleted, 1 items removed/);
});

test('errors: no table set (2), table missing (3), not configured (3), DynamoDB unreachable (75), key not routed (2)', async () => {
  const { env } = await fleet([]);
  let r = await runCli(['fleet', 'hosts'], { ...env, THINRELAY_FLEET_TABLE: '' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /\[FLEET_TABLE_UNSET\]/);

  r = await runCli(['fleet', 'status', 'images/a.tar'], { ...env, THINRELAY_FLEET_TABLE: 'nope' });
  assert.equal(r.code, 3);
  assert.match(r.stderr, /\[FLEET_TABLE_NOT_FOUND\] .*the fleet table "nope" does not exist/);

  const bare = `fleet-bare-${++n}`;
  await createFleetTable(dynamo.client, bare);
  r = await runCli(['fleet', 'hosts'], { ...env, THINRELAY_FLEET_TABLE: bare });
  assert.equal(r.code, 3);
  assert.match(r.stderr, /\[FLEET_NOT_CONFIGURED\]/);

  // A port nobody listens on.
  const closed: Server = createServer();
  await new Promise<void>((res) => closed.listen(0, '127.0.0.1', res));
  const port = (closed.address() as { port: number }).port;
  await new Promise<void>((res) => closed.close(() => res()));
  r = await runCli(['fleet', 'hosts'], {
    ...env,
    AWS_ENDPOINT_URL_DYNAMODB: `http://127.0.0.1:${port}`,
    AWS_MAX_ATTEMPTS: '1',
  });
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stderr, /\[FLEET_UNREACHABLE\] .*DynamoDB unreachable: ECONNREFUSED/);

  r = await runCli(['fleet', 'status', 'other/readme.txt'], env);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /\[KEY_NOT_ROUTED\] other\/readme\.txt is not an image key/);

  r = await runCli(['fleet', 'wait', 'images/a.tar', '--timeout', 'soon'], env);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--timeout must be a duration/);
});
