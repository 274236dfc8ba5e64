/**
 * The trust gate in the agent daemon (the built CLI, a child process) against
 * real SQS and S3 emulators, loop devices and mounts: an unsigned image waits
 * in awaiting-signature without a worker, its sidecar's event wakes it; one
 * never signed fails SIGNATURE_MISSING at its deadline and its message takes
 * the DLQ path. A sidecar's event is recorded as applied: a duplicate
 * delivery is stale, not a second evaluation. Keys and signatures are made
 * with openssl.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { StateStore } from '../../host-agent/src/store/index.js';
import { serializeImageEvent } from '../../schema/image-event.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { putImageEvent, sequencerCounter } from '../helpers/image-events.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { KeyDir, type TestKey } from '../helpers/signing-keys.js';
import { sqsEnvFor, startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';
import { smallRootfsTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-images';
const nextSequencer = sequencerCounter(0x5000);

interface Host {
  stateDir: string;
  env: NodeJS.ProcessEnv;
  queueUrl: string;
  dlqUrl: string;
}

function imageRow(
  stateDir: string,
  key: string,
): { status: string; error_code: string | null; trust: string | null } {
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    const row = store.images.latestByKey(key);
    assert.ok(row !== undefined, `no image row for ${key}`);
    return row;
  } finally {
    store.close();
  }
}

function jobCount(stateDir: string): number {
  const store = StateStore.open(stateDir, { readonly: true });
  try {
    return store.db.prepare('SELECT count(*) FROM jobs').pluck().get() as number;
  } finally {
    store.close();
  }
}

describe('trust gate (agent)', { skip: needsRoot, timeout: 300_000 }, () => {
  let s3: S3Emulator;
  let sqs: SqsEmulator;
  let keys: KeyDir;
  let trusted: TestKey;
  let other: TestKey;
  let hostSeq = 0;

  before(async () => {
    [s3, sqs] = await Promise.all([startS3Emulator(), startSqsEmulator()]);
    await s3.createBucket(bucket);
    keys = new KeyDir();
    trusted = keys.ecdsa();
    other = keys.ecdsa();
  });
  after(async () => {
    keys?.remove();
    await Promise.all([s3?.stop(), sqs?.stop()]);
  });

  async function newHost(
    t: TestContext,
    awaitSeconds: number,
    maxReceiveCount = 100,
  ): Promise<Host> {
    const n = ++hostSeq;
    const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-trust-agent-${n}-`));
    const q = await sqs.createQueue(`tr-trust-h${n}`, {
      dlq: { name: `tr-trust-dlq-h${n}`, maxReceiveCount },
    });
    const policy = keys.path(`policy-${n}.json`);
    writeFileSync(
      policy,
      JSON.stringify({
        signatures: { mode: 'require', publicKeys: [trusted.publicKeyPem], awaitSeconds },
      }),
    );
    const env: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      ...sqsEnvFor(sqs),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_VOLUME_SIZE: '96M',
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_TRANSIENT_DELAY_MS: '100',
      THINRELAY_SIGNATURE_POLICY: policy,
    };
    t.after(async () => {
      await runCli(['pool', 'destroy', '--force'], env);
      releaseStateDir(stateDir);
    });
    return { stateDir, env, queueUrl: q.url, dlqUrl: q.dlqUrl! };
  }

  function agentFor(t: TestContext, host: Host, extra: string[] = []): AgentProcess {
    const agent = startAgent(
      ['--queue-url', host.queueUrl, '--metrics-addr', '127.0.0.1:0', ...extra],
      host.env,
    );
    t.after(() => agent.kill('SIGKILL'));
    return agent;
  }

  test('unsigned: awaiting-signature, no worker held; the sidecar event makes it ready', async (t) => {
    const host = await newHost(t, 3600);
    const key = 'images/late.tar';
    const tar = await smallRootfsTar('late');
    const { eTag } = await s3.putObject(bucket, key, tar);
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putImageEvent(bucket, key, eTag, nextSequencer())),
    );
    // One worker: a waiting image must not hold it.
    const agent = agentFor(t, host, ['--concurrency', '1']);
    await agent.waitForLog(() => agent.outcomes().length >= 1);
    assert.equal(agent.outcomes()[0]!.outcome, 'awaiting-signature');
    assert.equal(imageRow(host.stateDir, key).status, 'awaiting-signature');
    assert.equal(jobCount(host.stateDir), 0, 'no job while waiting');

    // Another (signed) image goes through the one worker meanwhile.
    const other = 'images/other.tar';
    const otherTar = await smallRootfsTar('other');
    const o = await s3.putObject(bucket, other, otherTar);
    await s3.putObject(bucket, `${other}.sig`, keys.sign(trusted, otherTar));
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putImageEvent(bucket, other, o.eTag, nextSequencer())),
    );
    await agent.waitForLog(() => agent.outcomes().length >= 2);
    assert.equal(agent.outcomes()[1]!.outcome, 'applied');
    assert.equal(imageRow(host.stateDir, other).status, 'ready');
    assert.equal(imageRow(host.stateDir, key).status, 'awaiting-signature');

    const sigKey = `${key}.sig`;
    const sig = await s3.putObject(bucket, sigKey, keys.sign(trusted, tar));
    await sqs.send(
      host.queueUrl,
      // As the fan-out sends a sidecar's upload (lambda/src/records.ts).
      serializeImageEvent({
        ...putImageEvent(bucket, sigKey, sig.eTag, nextSequencer()),
        kind: 'sidecar.put',
      }),
    );
    await agent.waitForLog(() => agent.outcomes().length >= 3);
    assert.equal(agent.outcomes()[2]!.outcome, 'applied', JSON.stringify(agent.outcomes()[2]));
    assert.equal(imageRow(host.stateDir, key).status, 'ready');
    assert.equal((await agent.stop()).code, 0);
  });

  test('never signed: SIGNATURE_MISSING at the deadline, the message on the DLQ path', async (t) => {
    // local-aws-sqs counts each ChangeMessageVisibility as a receive (field notes): 3 here is
    // SQS's 2 (the awaiting receive, the deadline receive that fails), then the DLQ.
    const host = await newHost(t, 2, 3);
    const key = 'images/never.tar';
    const { eTag } = await s3.putObject(bucket, key, await smallRootfsTar('never'));
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putImageEvent(bucket, key, eTag, nextSequencer())),
    );
    const agent = agentFor(t, host);
    await agent.waitForLog(() => agent.outcomes().length >= 2, 30_000);
    const [first, second] = agent.outcomes();
    assert.equal(first!.outcome, 'awaiting-signature');
    assert.equal(second!.outcome, 'failed');
    assert.equal(second!.code, 'SIGNATURE_MISSING');
    const row = imageRow(host.stateDir, key);
    assert.equal(row.status, 'failed');
    assert.equal(row.error_code, 'SIGNATURE_MISSING');
    // Handed back after its second receive: the redrive policy (maxReceiveCount 2) moves it.
    const deadline = Date.now() + 20_000;
    while ((await sqs.depth(host.dlqUrl)).visible === 0 && Date.now() < deadline) await sleep(500);
    assert.equal((await sqs.depth(host.dlqUrl)).visible, 1);
    assert.equal((await agent.stop()).code, 0);
  });
  test('a duplicate sidecar event is stale: its image is not evaluated again', async (t) => {
    const host = await newHost(t, 3600, 3);
    const key = 'images/duplicate.tar';
    const tar = await smallRootfsTar('duplicate');
    const { eTag } = await s3.putObject(bucket, key, tar);
    await sqs.send(
      host.queueUrl,
      serializeImageEvent(putImageEvent(bucket, key, eTag, nextSequencer())),
    );
    const agent = agentFor(t, host);
    await agent.waitForLog(() => agent.outcomes().length >= 1);
    assert.equal(agent.outcomes()[0]!.outcome, 'awaiting-signature');

    // Signed by a key the policy does not trust: the sidecar's event fails the image.
    const sigKey = `${key}.sig`;
    const sig = await s3.putObject(bucket, sigKey, keys.sign(other, tar));
    const event = serializeImageEvent({
      ...putImageEvent(bucket, sigKey, sig.eTag, nextSequencer()),
      kind: 'sidecar.put',
    });
    const sidecarOutcomes = (): ReturnType<AgentProcess['outcomes']> =>
      agent.outcomes().filter((o) => o.kind === 'sidecar.put');
    await sqs.send(host.queueUrl, event);
    await agent.waitForLog(() => sidecarOutcomes().length >= 1, 30_000);
    assert.equal(sidecarOutcomes()[0]!.outcome, 'failed');
    assert.equal(sidecarOutcomes()[0]!.code, 'SIGNATURE_INVALID');
    const checked = imageRow(host.stateDir, key);
    assert.equal(checked.error_code, 'SIGNATURE_INVALID');

    // S3 delivers at least once: the same event (its sequencer) in another message.
    await sqs.send(host.queueUrl, event);
    await agent.waitForLog(() => sidecarOutcomes().length >= 2, 30_000);
    assert.equal(sidecarOutcomes()[1]!.outcome, 'stale', JSON.stringify(sidecarOutcomes()[1]));
    assert.equal(imageRow(host.stateDir, key).trust, checked.trust, 'no second check recorded');
    assert.equal((await agent.stop()).code, 0);
  });
});
