/**
 * A rollout followed from the operator's seat, end to end: the local stack
 * (s3rver → the real fan-out handler → SQS; the fleet table in dynalite),
 * three `thinrelay agent --group default` processes that register
 * themselves (separate state dirs, real loop devices), uploads through S3,
 * and `thinrelay fleet status` / `fleet wait` as a deploy pipeline runs them.
 *
 * One image is refused by one host: host-c runs with a stricter entry limit
 * (THINRELAY_MAX_ENTRIES), as a host with a tighter policy would.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalStack, type LocalStack } from '../../host-agent/src/demo/local-stack.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { packTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-rollout';
const key = 'images/app.tar';

interface Host {
  id: string;
  stateDir: string;
  env: NodeJS.ProcessEnv;
  agent: AgentProcess;
}

/** An image of `files` files (plus its directory). */
const image = (files: number, marker: string): Promise<Buffer> =>
  packTar([
    { name: 'app/', type: 'directory' },
    ...Array.from({ length: files }, (_, i) => ({
      name: `app/f${i}`,
      content: `${marker} ${i}\n`,
    })),
  ]);

interface StatusJson {
  etag: string;
  outcome: string;
  counts: Record<string, number>;
  hosts: { host: string; state: string; reason: string | null; message: string | null }[];
}

describe('fleet rollout: three hosts, one refuses', { skip: needsRoot, timeout: 300_000 }, () => {
  let stack: LocalStack;
  const hosts: Host[] = [];

  before(async () => {
    // maxReceiveCount 3 (the stack's default): the refused event is
    // redelivered before it reaches the DLQ, and each redelivery must leave
    // the host's item 'failed', not 'processing'.
    stack = await startLocalStack({ bucket, maxReceiveCount: 3, staleAfterSeconds: 60 });
    for (const id of ['host-a', 'host-b', 'host-c']) {
      const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-rollout-${id}-`));
      const env: NodeJS.ProcessEnv = {
        ...stack.env,
        THINRELAY_STATE_DIR: stateDir,
        THINRELAY_RESERVE_BYTES: '0',
        THINRELAY_VOLUME_SIZE: '64M',
        THINRELAY_WAIT_SECONDS: '1',
        THINRELAY_HEARTBEAT_SECONDS: '2',
        ...(id === 'host-c' ? { THINRELAY_MAX_ENTRIES: '20' } : {}),
      };
      const agent = startAgent(
        ['--group', 'default', '--host-id', id, '--metrics-addr', 'off'],
        env,
      );
      hosts.push({ id, stateDir, env, agent });
    }
    // All three registered (queues made, host items written) before the first upload.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await runCli(['fleet', 'hosts', '--json'], stack.env);
      const live =
        r.code === 0 ? (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live : 0;
      if (live === 3) break;
      assert.ok(Date.now() < deadline, `hosts never registered: ${r.stdout}${r.stderr}`);
      await sleep(300);
    }
  });

  after(async () => {
    for (const h of hosts) {
      await h.agent.stop();
      await runCli(['pool', 'destroy', '--force'], h.env);
      const inv = hostInventory(h.stateDir);
      releaseStateDir(h.stateDir);
      assert.deepEqual(inv.mounts, [], `${h.id}: mounts left`);
      assert.deepEqual(inv.loops, [], `${h.id}: loop devices left`);
    }
    await stack?.stop();
  });

  test('status shows two ready and one failed with the reason; wait exits 1, then 0 once fixed', async () => {
    await stack.s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: await image(40, 'v1') }),
    );
    const failedWait = await runCli(
      ['fleet', 'wait', key, '--timeout', '120s', '--interval', '500ms'],
      stack.env,
    );
    assert.equal(failedWait.code, 1, failedWait.stdout + failedWait.stderr);

    const status = await runCli(['fleet', 'status', key, '--json'], stack.env);
    assert.equal(status.code, 0, status.stderr);
    const s = JSON.parse(status.stdout) as StatusJson;
    assert.equal(s.outcome, 'failed');
    assert.equal(s.counts.expected, 3);
    assert.equal(s.counts.ready, 2);
    assert.equal(s.counts.failed, 1);
    const failed = s.hosts.filter((h) => h.state === 'failed');
    assert.deepEqual(
      failed.map((h) => [h.host, h.reason]),
      [['host-c', 'LIMIT_ENTRY_COUNT']],
    );
    assert.ok(failed[0]!.message, 'the failure says why');
    const text = await runCli(['fleet', 'status', key], stack.env);
    assert.match(text.stdout, /ready 2\/3 .*failed 1/);
    assert.match(text.stdout, /host-c +default +failed +\[LIMIT_ENTRY_COUNT\]/);

    // The object is fixed: a version every host accepts.
    await stack.s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: await image(5, 'v2') }),
    );
    const okWait = await runCli(
      ['fleet', 'wait', key, '--timeout', '120s', '--interval', '500ms'],
      stack.env,
    );
    assert.equal(okWait.code, 0, okWait.stdout + okWait.stderr);
    const end = JSON.parse(okWait.stdout.trim().split('\n').at(-1)!) as StatusJson & {
      result: string;
    };
    assert.equal(end.result, 'ready');
    assert.notEqual(end.etag, s.etag, 'the fixed version, not the refused one');
    assert.deepEqual(
      end.hosts.map((h) => [h.host, h.state]),
      [
        ['host-a', 'ready'],
        ['host-b', 'ready'],
        ['host-c', 'ready'],
      ],
    );
  });
});
