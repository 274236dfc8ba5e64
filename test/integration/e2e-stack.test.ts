/**
 * End to end on one machine: an upload to the S3 emulator → its object event
 * → the real fan-out Lambda handler → two host queues → two agents (separate
 * state dirs, real loop devices) → an activated snapshot on each host.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalStack, type LocalStack } from '../../host-agent/src/demo/local-stack.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRoot } from '../helpers/root.js';
import { packTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-e2e';

interface RunningHost {
  name: string;
  stateDir: string;
  env: NodeJS.ProcessEnv;
  agent: AgentProcess;
  dlqUrl: string;
}

describe('end to end: upload → Lambda → host queues → agents', { skip: needsRoot }, () => {
  let stack: LocalStack;
  const hosts: RunningHost[] = [];

  before(async () => {
    stack = await startLocalStack({ bucket, hosts: ['host-a', 'host-b'], maxReceiveCount: 2 });
    for (const h of stack.hosts) {
      const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-e2e-${h.name}-`));
      const env = {
        ...stack.env,
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_RESERVE_BYTES: '0',
        THINRELAY_VOLUME_SIZE: '64M',
        THINRELAY_WAIT_SECONDS: '1',
      };
      const agent = startAgent(['--queue-url', h.queueUrl, '--metrics-addr', 'off'], env);
      hosts.push({ name: h.name, stateDir, env, agent, dlqUrl: h.dlqUrl });
    }
  });

  after(async () => {
    for (const h of hosts) {
      await h.agent.stop();
      await runCli(['pool', 'destroy', '--force'], h.env);
      const inv = hostInventory(h.stateDir);
      releaseStateDir(h.stateDir);
      assert.deepEqual(inv.mounts, [], `${h.name}: mounts left`);
      assert.deepEqual(inv.loops, [], `${h.name}: loop devices left`);
    }
    await stack?.stop();
  });

  test('one upload becomes an activated snapshot on every host', async () => {
    const key = 'images/web server.tar'; // a space: URL-encoded as "+" in the notification
    const archive = await packTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/os-release', content: 'ID=thinrelay-e2e\n' },
    ]);
    await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: archive }));
    for (const h of hosts) {
      const done = await h.agent.waitForLog((l) => l.outcome === 'applied', 60_000);
      assert.equal(done.key, key, `${h.name} applied the decoded key`);
    }
    for (const h of hosts) {
      const r = await runCli(['snapshots', '--json'], h.env);
      assert.equal(r.code, 0, r.stderr);
      const snaps = JSON.parse(r.stdout) as { key: string; devicePath: string }[];
      assert.equal(snaps.length, 1, `${h.name}: one active snapshot`);
      assert.equal(snaps[0]!.key, key);
      const release = withMounted(snaps[0]!.devicePath, (root) =>
        readFileSync(join(root, 'etc/os-release'), 'utf8'),
      );
      assert.equal(release, 'ID=thinrelay-e2e\n');
    }
  });

  test("a hostile upload lands in every host's DLQ", async () => {
    const key = 'images/hostile.tar';
    const archive = await packTar([{ name: '../../escape', content: 'x' }]);
    await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: archive }));
    const deadline = Date.now() + 60_000;
    for (const h of hosts) {
      for (;;) {
        const out = await stack.sqs.send(
          new GetQueueAttributesCommand({
            QueueUrl: h.dlqUrl,
            AttributeNames: ['ApproximateNumberOfMessages'],
          }),
        );
        if (out.Attributes?.ApproximateNumberOfMessages === '1') break;
        assert.ok(Date.now() < deadline, `${h.name}: the message never reached the DLQ`);
        await sleep(250);
      }
      const failed = await runCli(['failed', '--json'], h.env);
      assert.match(failed.stdout, /ARCHIVE_PATH_ESCAPE/);
    }
  });
});
