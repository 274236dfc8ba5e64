/**
 * `thinrelay activate` through the daemon's Activation service
 * (thinrelay.v1.Activation on the snapshotter socket): with a standalone
 * `thinrelay snapshotter` serving the state dir the CLI hands the work over
 * (the service logs it; the CLI never opens the store: it finishes with a
 * better-sqlite3 that refuses images.db, and while this test holds the state
 * dir's reconcile lock, both of which stop an in-process activate), prints
 * what the in-process path prints (text and --json, a container image's
 * run config included), keeps a failure's code, message, hint and exit
 * code, and falls back to the in-process path (saying so under --verbose)
 * when the socket is absent, stale (the service was killed -9), served for
 * another state dir, served by a daemon without the Activation service, or
 * held by something that is not HTTP/2. Real S3 emulator, loop devices, mkfs.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { FileLock } from '../../host-agent/src/store/file-lock.js';
import { reconcileLockFileName } from '../../host-agent/src/store/reconcile-lock.js';
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import {
  activationDescriptor,
  activationServiceName,
  decodeActivateResponse,
  encodeActivateRequest,
} from '../../host-agent/src/snapshotter/activation-wire.js';
import { loaderOptions } from '../../host-agent/src/snapshotter/wire-format.js';
import { cliPath, runCli, storeGuardArgs, type CliResult } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { buildOciFixture } from '../helpers/oci-fixtures.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { startSnapshotter, type RunningSnapshotter } from '../helpers/snapshotter-service.js';

const skip = needsRootAndTools(['mkfs.ext4', 'losetup', 'blkid', 'umoci', 'skopeo']);
const bucket = 'thinrelay-images';

interface Activation {
  snapshotId: number;
  devicePath: string;
  config: unknown;
}

/** The printed activation with what differs between two activations (id, device) checked and blanked. */
function shapeOf(r: CliResult): { stdout: string; activation: Activation | null } {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  if (!r.stdout.startsWith('{')) {
    assert.match(r.stdout, /^\/dev\/loop\d+\n$/);
    return { stdout: r.stdout.replace(/\d+/, 'N'), activation: null };
  }
  const a = JSON.parse(r.stdout) as Activation;
  assert.deepEqual(Object.keys(a), ['snapshotId', 'devicePath', 'config']);
  assert.ok(Number.isInteger(a.snapshotId) && a.snapshotId > 0);
  assert.match(a.devicePath, /^\/dev\/loop\d+$/);
  return {
    stdout: JSON.stringify({ ...a, snapshotId: 0, devicePath: '/dev/loopN' }) + '\n',
    activation: a,
  };
}

describe('thinrelay activate through the service', { skip, timeout: 600_000 }, () => {
  let s3: S3Emulator;
  let work: string;
  let stateDir: string;
  let socket: string;
  let env: NodeJS.ProcessEnv;
  const services: RunningSnapshotter[] = [];
  const cli = (...args: string[]): Promise<CliResult> => runCli(args, env);
  /** The service's log lines (JSON) with this message. */
  const logged = (svc: RunningSnapshotter, msg: string): Record<string, unknown>[] =>
    svc
      .log()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === msg);
  const served = (svc: RunningSnapshotter): number => logged(svc, 'activation served').length;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'thinrelay-activate-svc-'));
    stateDir = join(work, 'state');
    socket = join(work, 'run/snapshotter.sock');
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    env = {
      ...s3EnvFor(s3),
      THINRELAY_CONFIG_FILE: 'none',
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BACKEND: 'loop',
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_SNAPSHOTTER_SOCKET: socket,
    };
    await s3.putObject(bucket, 'images/flat.tar', await buildSampleRootfs());
    mkdirSync(join(work, 'oci'));
    const fx = await buildOciFixture(join(work, 'oci'));
    await s3.putObject(bucket, 'images/app.tar', readFileSync(fx.dockerArchive));
    for (const key of ['images/flat.tar', 'images/app.tar']) {
      const r = await cli('process-image', '--s3-key', key);
      assert.equal(r.code, 0, r.stderr);
    }
  });
  after(async () => {
    for (const s of services) await s.stop();
    if (stateDir !== undefined) releaseStateDir(stateDir);
    await s3?.stop();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  });

  test("the CLI's hand-written codec agrees with the service's descriptor", () => {
    const def = fromJSON(activationDescriptor as Parameters<typeof fromJSON>[0], loaderOptions)[
      activationServiceName
    ] as grpc.ServiceDefinition;
    const method = def.Activate!;
    const image = 'images/ä €.tar';
    assert.deepEqual(
      method.requestDeserialize(
        encodeActivateRequest({ stateDir: '/var/lib/thinrelay', backend: 'loop', image }),
      ),
      { state_dir: '/var/lib/thinrelay', backend: 'loop', image },
    );
    const config = JSON.stringify({ Env: ['A=1'], Cmd: ['/bin/sh', '-c', 'x'.repeat(300)] });
    for (const snapshot_id of [1, 300, 2 ** 40]) {
      const bytes = method.responseSerialize({
        snapshot_id,
        device_path: '/dev/loop7',
        config_json: config,
      });
      assert.deepEqual(decodeActivateResponse(bytes), {
        snapshotId: snapshot_id,
        devicePath: '/dev/loop7',
        configJson: config,
      });
    }
    // A field it does not know (a newer service) is skipped.
    const withUnknown = Buffer.concat([
      Buffer.from([0x48, 0x01]),
      method.responseSerialize({ snapshot_id: 5, device_path: '/dev/loop1', config_json: 'null' }),
    ]);
    assert.equal(decodeActivateResponse(withUnknown).snapshotId, 5);
  });

  test('no socket: activates in-process and says so under --verbose', async () => {
    assert.equal(existsSync(socket), false);
    const r = await cli('activate', 'images/flat.tar', '--verbose');
    assert.match(
      r.stderr,
      /no service at .*snapshotter\.sock \(ENOENT\): activating in this process/,
    );
    shapeOf(r);
  });

  test('a running service does the work; output and errors as in-process', async () => {
    const svc = await startSnapshotter(socket, env);
    services.push(svc);

    // Reference: the in-process path, beside the running service.
    const localText = shapeOf(await cli('activate', 'images/flat.tar', '--in-process'));
    const localJson = shapeOf(await cli('activate', 'images/app.tar', '--in-process', '--json'));
    assert.notEqual(localJson.activation!.config, null, 'a container image has a run config');
    assert.equal(served(svc), 0);

    // The state dir's reconcile lock held here: an in-process activate waits for it.
    const lock = new FileLock(join(stateDir, reconcileLockFileName));
    assert.ok(lock.tryAcquire());
    let released = false;
    try {
      // And a better-sqlite3 that refuses images.db: the CLI must never open the store.
      const viaText = await runCli(['activate', 'images/flat.tar', '--verbose'], env, {
        nodeArgs: storeGuardArgs,
      });
      assert.match(viaText.stderr, /done by the service on .*snapshotter\.sock/);
      assert.deepEqual(shapeOf(viaText).stdout, localText.stdout);
      const viaJson = await runCli(['activate', 'images/app.tar', '--json'], env, {
        nodeArgs: storeGuardArgs,
      });
      assert.equal(viaJson.stderr, '');
      const via = shapeOf(viaJson);
      assert.equal(via.stdout, localJson.stdout);
      assert.deepEqual(via.activation!.config, localJson.activation!.config);
      assert.equal(served(svc), 2, svc.log());
      assert.ok(
        logged(svc, 'activation served').some((l) => l.snapshotId === via.activation!.snapshotId),
        svc.log(),
      );

      // Eight at once: eight devices, all through the service.
      const many = await Promise.all(
        Array.from({ length: 8 }, () => cli('activate', 'images/flat.tar')),
      );
      for (const m of many) shapeOf(m);
      const devices = many.map((m) => m.stdout.trim());
      assert.equal(new Set(devices).size, 8);
      assert.equal(served(svc), 10);

      // The control: the in-process path does wait for the lock this test holds.
      const child = spawn(
        process.execPath,
        [cliPath, 'activate', 'images/flat.tar', '--in-process'],
        {
          env: { ...process.env, ...env },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      const early = await Promise.race([
        exited.then(() => 'exited'),
        new Promise((r) => setTimeout(() => r('waiting'), 1500)),
      ]);
      assert.equal(early, 'waiting', 'an in-process activate waits for the reconcile lock');
      lock.close();
      released = true;
      assert.equal(await exited, 0);
      assert.match(out, /^\/dev\/loop\d+\n$/);
      assert.equal(served(svc), 10);
      // The control for the guard: the in-process path is stopped by it (the store's
      // own wrapping makes it STATE_DIR, exit 3).
      const guarded = await runCli(['activate', 'images/flat.tar', '--in-process'], env, {
        nodeArgs: storeGuardArgs,
      });
      assert.equal(guarded.code, 3, guarded.stderr);
      assert.match(guarded.stderr, /STORE_OPENED: this process opened the state database/);
    } finally {
      if (!released) lock.close();
    }

    // A failure keeps its code, message, hint and exit code: byte for byte the in-process one.
    // (warn: the in-process path's own info lines, e.g. reconcile's, are not the contract.)
    const quiet = { ...env, THINRELAY_LOG_LEVEL: 'warn' };
    for (const args of [
      ['activate', 'images/none.tar'],
      ['activate', 'images/none.tar', '--json'],
    ]) {
      const remote = await runCli(args, quiet);
      const local = await runCli([...args, '--in-process'], quiet);
      assert.equal(remote.code, 4);
      assert.deepEqual(
        { code: remote.code, stdout: remote.stdout, stderr: remote.stderr },
        { code: local.code, stdout: local.stdout, stderr: local.stderr },
      );
    }
    assert.ok(logged(svc, 'activation failed').some((l) => l.code === 'NOT_FOUND'));
  });

  test('a service on another state dir declines; the CLI activates in-process', async () => {
    const otherSocket = join(work, 'run/other.sock');
    const other = await startSnapshotter(otherSocket, {
      ...env,
      THINRELAY_STATE_DIR: join(work, 'other-state'),
    });
    services.push(other);
    const d = await runCli(['activate', 'images/flat.tar', '--verbose'], {
      ...env,
      THINRELAY_SNAPSHOTTER_SOCKET: otherSocket,
    });
    assert.match(d.stderr, /no service at .*other\.sock \(declined: this service runs on /);
    shapeOf(d);
    assert.equal(logged(other, 'activation declined').length, 1, other.log());
    assert.equal(served(other), 0);
    await other.stop();
  });

  test('an older daemon (no Activation) or a peer that hangs up: falls back in-process', async () => {
    // A gRPC server on the socket that serves no thinrelay.v1.Activation: UNIMPLEMENTED.
    const older = new grpc.Server();
    const olderSocket = join(work, 'run/older.sock');
    await new Promise<void>((resolve, reject) =>
      older.bindAsync(`unix:${olderSocket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err === null ? resolve() : reject(err),
      ),
    );
    try {
      const r = await runCli(['activate', 'images/flat.tar', '--verbose'], {
        ...env,
        THINRELAY_SNAPSHOTTER_SOCKET: olderSocket,
      });
      assert.match(
        r.stderr,
        /no service at .*older\.sock \(the service there has no thinrelay\.v1\.Activation/,
      );
      shapeOf(r);
    } finally {
      older.forceShutdown();
    }
    // Not HTTP/2 at all: it accepts and hangs up.
    const hangup = net.createServer((c) => c.destroy());
    const hangupSocket = join(work, 'run/hangup.sock');
    await new Promise<void>((resolve) => hangup.listen(hangupSocket, resolve));
    try {
      const t0 = Date.now();
      const r = await runCli(['activate', 'images/flat.tar', '--verbose'], {
        ...env,
        THINRELAY_SNAPSHOTTER_SOCKET: hangupSocket,
      });
      assert.match(r.stderr, /no service at .*hangup\.sock \(.+\): activating in this process/);
      assert.ok(Date.now() - t0 < 4000, 'no wait for the handshake timeout');
      shapeOf(r);
    } finally {
      await new Promise((resolve) => hangup.close(resolve));
    }
  });

  test('a stale socket (service killed -9): falls back in-process', async () => {
    const svc = services[0]!;
    svc.child.kill('SIGKILL');
    await svc.exited;
    assert.ok(existsSync(socket), 'kill -9 leaves the socket file behind');
    const r = await cli('activate', 'images/flat.tar', '--verbose');
    assert.match(
      r.stderr,
      /no service at .*snapshotter\.sock \(ECONNREFUSED\): activating in this process/,
    );
    shapeOf(r);
    // THINRELAY_SNAPSHOTTER_SOCKET=off: no service is asked at all.
    const off = await runCli(['activate', 'images/flat.tar', '--verbose'], {
      ...env,
      THINRELAY_SNAPSHOTTER_SOCKET: 'off',
    });
    assert.match(off.stderr, /THINRELAY_SNAPSHOTTER_SOCKET is off: activating in this process/);
    shapeOf(off);
  });
});
