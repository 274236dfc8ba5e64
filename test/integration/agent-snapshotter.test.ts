/**
 * `thinrelay agent` serving containerd's snapshots API itself
 * (THINRELAY_SNAPSHOTTER_SOCKET) on its own store and loop backend: a gRPC
 * client prepares, commits, clones, mounts and removes through the agent's
 * socket; the standalone `thinrelay snapshotter` refuses the agent's state
 * dir, and the agent refuses a state dir a standalone snapshotter holds;
 * `thinrelay activate` is answered by the agent's Activation service; a
 * graceful stop takes the socket away.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRootAndTools } from '../helpers/root.js';
import {
  snapshotsClient,
  type SnapshotsClient,
  type WireMount,
} from '../helpers/snapshots-client.js';
import { sqsEnvFor, startSqsEmulator } from '../helpers/sqs-emulator.js';
import { until } from '../helpers/until.js';

const skip = needsRootAndTools(['mkfs.ext4', 'losetup', 'blkid']);

/** Run the CLI expecting a refusal: a daemon that starts instead is killed after `ms` (exit null). */
function runRefused(
  args: string[],
  env: NodeJS.ProcessEnv,
  ms = 30_000,
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGTERM'), ms);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    }),
  );
}
const chainId = `sha256:${'ab'.repeat(32)}`;

test(
  'the agent serves the snapshots API on its own store; one daemon per state dir',
  { skip, timeout: 180_000 },
  async (t) => {
    const work = mkdtempSync(join(tmpdir(), 'thinrelay-agentsnap-'));
    const stateDir = join(work, 'state');
    const socket = join(work, 'run/snapshotter.sock');
    const sqs = await startSqsEmulator();
    let agent: AgentProcess | undefined;
    let client: SnapshotsClient | undefined;
    const standalone: { kill(): void }[] = [];
    t.after(async () => {
      client?.close();
      agent?.kill('SIGKILL');
      await agent?.exited;
      for (const s of standalone) s.kill();
      await sqs.stop();
      releaseStateDir(stateDir);
      rmSync(work, { recursive: true, force: true });
    });
    const q = await sqs.createQueue('tr-host-agentsnap');
    const env: NodeJS.ProcessEnv = {
      ...sqsEnvFor(sqs),
      THINRELAY_CONFIG_FILE: 'none',
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BACKEND: 'loop',
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '64M',
    };
    agent = startAgent(['--queue-url', q.url, '--metrics-addr', 'off'], {
      ...env,
      THINRELAY_SNAPSHOTTER_SOCKET: socket,
    });
    await agent.waitForLog((l) => l.msg === 'agent started');
    assert.ok(existsSync(socket), 'the agent made its snapshotter socket');
    const st = statSync(socket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600, 'root-only by default');

    client = snapshotsClient(socket);
    // A base layer written through the API (as containerd's unpacker does), then committed.
    const base = (await client.call('Prepare', { key: 'default/1/extract', parent: '' }))
      .mounts as WireMount[];
    assert.equal(base.length, 1);
    const name = `default/2/${chainId}`;
    await client.call('Commit', { name, key: 'default/1/extract' });

    // A container's writable snapshot of it: a clone in the agent's pool.
    const prepared = (
      await client.call('Prepare', { key: 'default/3/ctr', parent: name, labels: { a: 'b' } })
    ).mounts as WireMount[];
    assert.equal(prepared.length, 1);
    assert.equal(prepared[0]!.type, 'ext4');
    assert.deepEqual(prepared[0]!.options, ['rw', 'loop']);
    assert.ok(
      prepared[0]!.source.startsWith(join(stateDir, 'pool') + '/'),
      `${prepared[0]!.source} is in the agent's pool`,
    );
    assert.ok(existsSync(prepared[0]!.source));
    const again = (await client.call('Mounts', { key: 'default/3/ctr' })).mounts as WireMount[];
    assert.deepEqual(again, prepared);
    // It is a real ext4 the kernel can read (blkid reads the file, no loop needed).
    const probe = await new Promise<string>((resolve, reject) => {
      const p = spawn('blkid', ['-o', 'value', '-s', 'TYPE', prepared[0]!.source]);
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.on('error', reject);
      p.on('close', () => resolve(out.trim()));
    });
    assert.equal(probe, 'ext4');

    await client.call('Remove', { key: 'default/3/ctr' });
    assert.ok(!existsSync(prepared[0]!.source), 'Remove released the clone');
    await assert.rejects(
      client.call('Stat', { key: 'default/3/ctr' }),
      (err: grpc.ServiceError) => {
        assert.equal(err.code, grpc.status.NOT_FOUND);
        return true;
      },
    );
    client.close();
    client = undefined;

    // `thinrelay activate` goes through the agent's Activation service on the same socket;
    // the agent's answer (no such image) is the CLI's own error and exit code.
    const act = await runCli(['activate', 'images/none.tar', '--verbose'], {
      ...env,
      THINRELAY_SNAPSHOTTER_SOCKET: socket,
    });
    assert.equal(act.code, 4, act.stderr);
    assert.match(act.stderr, /failed in the service on .*snapshotter\.sock/);
    assert.match(act.stderr, /\[NOT_FOUND\] no image "images\/none\.tar" on this host/);
    await agent.waitForLog((l) => l.msg === 'activation failed');

    // The standalone snapshotter refuses the agent's state dir (it would share its store unlocked).
    const refused = await runRefused(
      ['snapshotter', '--socket', join(work, 'run/other.sock')],
      env,
    );
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(
      refused.stderr,
      /\[AGENT_RUNNING\] another thinrelay agent \(pid \d+\) is running/,
    );
    assert.match(refused.stderr, /THINRELAY_SNAPSHOTTER_SOCKET/, 'the hint names the setting');
    assert.ok(!existsSync(join(work, 'run/other.sock')));

    // A graceful stop takes the socket away.
    const stopped = await agent.stop();
    assert.equal(stopped.code, 0);
    assert.ok(!existsSync(socket), 'the socket is gone after SIGTERM');
    agent = undefined;

    // The other way round: a standalone snapshotter holds the state dir; an agent refuses it.
    const snap = spawn(process.execPath, [cliPath, 'snapshotter', '--socket', socket], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const snapExit = new Promise<number | null>((resolve) => snap.on('close', resolve));
    standalone.push({ kill: () => snap.kill('SIGKILL') });
    await until('the standalone socket', () => Promise.resolve(existsSync(socket)));
    const agentRefused = await runRefused(
      ['agent', '--queue-url', q.url, '--metrics-addr', 'off'],
      { ...env, THINRELAY_SNAPSHOTTER_SOCKET: join(work, 'run/agent.sock') },
    );
    assert.equal(agentRefused.code, 3, agentRefused.stderr);
    assert.match(
      agentRefused.stderr,
      /\[AGENT_RUNNING\] a standalone thinrelay snapshotter \(pid \d+\) is running/,
    );
    assert.ok(!existsSync(join(work, 'run/agent.sock')), 'the refused agent made no socket');
    snap.kill('SIGTERM');
    assert.equal(await snapExit, 0);
    assert.ok(!existsSync(socket), 'the standalone took its socket away');

    const inv = hostInventory(stateDir);
    assert.deepEqual(inv.loops, [], 'no loop device held');
    assert.deepEqual(inv.mounts, [], 'nothing mounted');
  },
);
