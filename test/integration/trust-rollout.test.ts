/**
 * Only signed images boot, end to end through the local stack: s3rver → the
 * real fan-out handler → the host's SQS queue → a `thinrelay agent --group
 * default` process whose group policy (the deployment item in dynalite)
 * requires a signature by a key made with openssl. An image uploaded
 * unsigned waits in awaiting-signature, visible in `fleet status`; its
 * `.sig` uploaded afterwards is routed to the same host as a sidecar, wakes
 * the image, and `fleet status` shows it ready with the signer. A sidecar
 * whose event was lost is found by the catch-up sync, which wakes its image;
 * so is a re-signed sidecar (another ETag than the one a failed check read).
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import {
  DeleteMessageCommand,
  GetQueueUrlCommand,
  PurgeQueueCommand,
  ReceiveMessageCommand,
} from '@aws-sdk/client-sqs';
import { queueNames } from '../../schema/fleet.js';
import { startLocalStack, type LocalStack } from '../../host-agent/src/demo/local-stack.js';
import { parseSignaturePolicy } from '../../schema/signature-policy.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { writeDeployment } from '../helpers/fleet-deployment.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { KeyDir, type TestKey } from '../helpers/signing-keys.js';
import { smallRootfsTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-trust-rollout';
const key = 'images/app.tar';
const hostId = 'host-signed';

interface HostRow {
  host: string;
  state: string;
  reason: string | null;
  message: string | null;
  signer: string | null;
  verifiedAt: string | null;
}

describe(
  'trust rollout: require, unsigned then signed',
  { skip: needsRoot, timeout: 300_000 },
  () => {
    let stack: LocalStack;
    let keys: KeyDir;
    let trusted: TestKey;
    let other: TestKey;
    let stateDir: string;
    let env: NodeJS.ProcessEnv;
    let agent: AgentProcess;

    before(async () => {
      keys = new KeyDir();
      trusted = keys.ecdsa();
      other = keys.ecdsa();
      stack = await startLocalStack({ bucket, maxReceiveCount: 3, staleAfterSeconds: 60 });
      // The group's policy, as `npm run deploy` writes it from infra/deployment.json.
      const signatures = {
        default: parseSignaturePolicy(
          { mode: 'require', publicKeys: [trusted.publicKeyPem], awaitSeconds: 600 },
          '$.signatures',
        ),
      };
      await writeDeployment(stack.dynamo, stack.fleetTable, { ...stack.deployment, signatures });
      stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-trust-rollout-'));
      env = {
        ...stack.env,
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_RESERVE_BYTES: '0',
        THINRELAY_VOLUME_SIZE: '96M',
        THINRELAY_WAIT_SECONDS: '1',
        THINRELAY_HEARTBEAT_SECONDS: '2',
      };
      agent = startAgent(['--group', 'default', '--host-id', hostId, '--metrics-addr', 'off'], env);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const r = await runCli(['fleet', 'hosts', '--json'], stack.env);
        const live =
          r.code === 0 ? (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live : 0;
        if (live === 1) break;
        assert.ok(Date.now() < deadline, `the host never registered: ${r.stdout}${r.stderr}`);
        await sleep(300);
      }
    });

    after(async () => {
      await agent?.stop();
      if (env !== undefined) await runCli(['pool', 'destroy', '--force'], env);
      if (stateDir !== undefined) {
        const inv = hostInventory(stateDir);
        releaseStateDir(stateDir);
        assert.deepEqual(inv.mounts, [], 'mounts left');
        assert.deepEqual(inv.loops, [], 'loop devices left');
      }
      await stack?.stop();
      keys?.remove();
    });

    async function hostRow(of = key): Promise<HostRow | undefined> {
      const r = await runCli(['fleet', 'status', of, '--json'], stack.env);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { hosts: HostRow[] }).hosts.find((h) => h.host === hostId);
    }

    async function untilState(state: string, of = key, timeoutMs = 90_000): Promise<HostRow> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const row = await hostRow(of);
        if (row?.state === state) return row;
        assert.ok(Date.now() < deadline, `never ${state}: ${JSON.stringify(row)}`);
        await sleep(500);
      }
    }

    test('unsigned: awaiting-signature in fleet status; its .sig upload wakes it: ready, with the signer', async () => {
      const tar = await smallRootfsTar('signed later');
      await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: tar }));
      const waiting = await untilState('awaiting-signature');
      assert.equal(waiting.reason, 'SIGNATURE_MISSING');
      assert.equal(waiting.signer, null);
      const all = await runCli(['fleet', 'status'], stack.env);
      assert.match(all.stdout, /awaiting a signature:\n +images\/app\.tar on host-signed/);

      // The signature, made with openssl as docs/trust.md shows, uploaded next to the image.
      await stack.s3.send(
        new PutObjectCommand({ Bucket: bucket, Key: `${key}.sig`, Body: keys.sign(trusted, tar) }),
      );
      const ready = await untilState('ready');
      assert.equal(ready.reason, null);
      assert.equal(ready.signer, `${trusted.fingerprint} (ecdsa-p256)`);
      assert.ok(ready.verifiedAt !== null && Date.now() - Date.parse(ready.verifiedAt) < 120_000);

      // Woken by the sidecar's routed event (the catch-up sync runs once, at start, on an empty bucket).
      const sidecarEvent = agent
        .outcomes()
        .find((l) => l.kind === 'sidecar.put' && l.key === `${key}.sig`);
      assert.ok(sidecarEvent, 'the sidecar reached the host as sidecar.put');
      assert.equal(sidecarEvent.outcome, 'applied');
      // Never an image of its own: no fleet item, no rollout, no image row.
      const sidecarStatus = await runCli(['fleet', 'status', '--json'], stack.env);
      const keysShown = (
        JSON.parse(sidecarStatus.stdout) as { images: { key: string }[] }
      ).images.map((i) => i.key);
      assert.deepEqual(keysShown, [key]);
      const images = await runCli(['images', '--json'], env);
      assert.deepEqual(
        (JSON.parse(images.stdout) as { key: string; status: string }[]).map((i) => [
          i.key,
          i.status,
        ]),
        [[key, 'ready']],
      );
    });

    test('a sidecar whose event was lost: the catch-up sync lists it and wakes the waiting image', async () => {
      const lost = 'images/lost-event.tar';
      const tar = await smallRootfsTar('event lost');
      await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: lost, Body: tar }));
      await untilState('awaiting-signature', lost);

      // The host is down while the sidecar arrives, and its queue loses the event.
      assert.equal((await agent.stop()).code, 0);
      await stack.s3.send(
        new PutObjectCommand({ Bucket: bucket, Key: `${lost}.sig`, Body: keys.sign(trusted, tar) }),
      );
      await stack.fanoutIdle();
      const queueName = queueNames.hostQueue(stack.deployment.namePrefix, 'default', hostId);
      const { QueueUrl } = await stack.sqs.send(new GetQueueUrlCommand({ QueueName: queueName }));
      await stack.sqs.send(new PurgeQueueCommand({ QueueUrl }));

      agent = startAgent(['--group', 'default', '--host-id', hostId, '--metrics-addr', 'off'], env);
      const round = await agent.waitForLog((l) => l.msg === 'sync round done', 90_000);
      assert.equal(round.woken, 1, JSON.stringify(round));
      assert.equal(agent.outcomes().length, 0, 'no queue message was involved');
      const ready = await untilState('ready', lost);
      assert.equal(ready.signer, `${trusted.fingerprint} (ecdsa-p256)`);
    });
    test('re-signed while its event was lost: the catch-up sync sees the new sidecar ETag and evaluates the failed image again', async () => {
      const resigned = 'images/resigned.tar';
      const tar = await smallRootfsTar('re-signed, event lost');
      // Signed by a key the group does not trust: SIGNATURE_INVALID.
      await stack.s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: `${resigned}.sig`,
          Body: keys.sign(other, tar),
        }),
      );
      await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: resigned, Body: tar }));
      const failed = await untilState('failed', resigned);
      assert.equal(failed.reason, 'SIGNATURE_INVALID');

      // The host is down while the image is re-signed, and its queue loses the event.
      assert.equal((await agent.stop()).code, 0);
      await stack.s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: `${resigned}.sig`,
          Body: keys.sign(trusted, tar),
        }),
      );
      await stack.fanoutIdle();
      const queueName = queueNames.hostQueue(stack.deployment.namePrefix, 'default', hostId);
      const { QueueUrl } = await stack.sqs.send(new GetQueueUrlCommand({ QueueName: queueName }));
      // Lost: every message taken off the queue (PurgeQueue is allowed once a minute).
      for (;;) {
        const { Messages } = await stack.sqs.send(
          new ReceiveMessageCommand({ QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }),
        );
        if (Messages === undefined || Messages.length === 0) break;
        for (const m of Messages)
          await stack.sqs.send(
            new DeleteMessageCommand({ QueueUrl, ReceiptHandle: m.ReceiptHandle }),
          );
      }

      agent = startAgent(['--group', 'default', '--host-id', hostId, '--metrics-addr', 'off'], env);
      const round = await agent.waitForLog((l) => l.msg === 'sync round done', 90_000);
      assert.equal(round.woken, 1, JSON.stringify(round));
      const ready = await untilState('ready', resigned);
      assert.equal(ready.signer, `${trusted.fingerprint} (ecdsa-p256)`);
    });
  },
);
