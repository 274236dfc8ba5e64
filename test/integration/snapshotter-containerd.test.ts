/**
 * `thinrelay snapshotter` as containerd's snapshotter, with the real
 * containerd and runc from Debian: a proxy snapshot plugin on a temporary
 * containerd (its own root, state and socket); `ctr images import` unpacks a
 * docker-archive into thinrelay (committed snapshots = sealed layer volumes
 * named by chain ID), `ctr run` runs a command on it, `ctr snapshots`
 * ls/info/usage/rm behave; a gRPC client checks the error codes containerd
 * relies on. Everything is torn down in t.after, even on failure.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';
import { chainIdsOf } from '../../host-agent/src/image/layer-source.js';
import {
  loaderOptions,
  serviceName,
  snapshotsDescriptor,
} from '../../host-agent/src/snapshotter/wire-format.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { needsRootAndTools } from '../helpers/root.js';
import { queryState } from '../helpers/small-fs.js';
import { until } from '../helpers/until.js';

const skip = needsRootAndTools(['containerd', 'ctr', 'runc', 'skopeo', 'mkfs.ext4', 'losetup']);

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Layer 1: the host's `cat` with its loader and libc (enough for runc to exec it); layer 2: a file. */
function buildLayers(work: string): Buffer[] {
  const base = join(work, 'layer1');
  const wanted = ['/usr/bin/cat'];
  for (const line of execFileSync('ldd', ['/usr/bin/cat'], { encoding: 'utf8' }).split('\n')) {
    const m = /(\/\S+) \(0x/.exec(line);
    if (m !== null) wanted.push(m[1]!);
  }
  for (const path of wanted) {
    // Where the program looks for it (/lib64/ld-linux..., /lib/x86_64-linux-gnu/libc...), as a file.
    const to = join(base, path.replace(/^\/usr\/bin\//, '/bin/'));
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(realpathSync(path), to);
  }
  const upper = join(work, 'layer2');
  mkdirSync(join(upper, 'etc'), { recursive: true });
  writeFileSync(join(upper, 'etc/message'), 'hello from a thinrelay layer\n');
  const tarOf = (dir: string): Buffer =>
    execFileSync('tar', ['-C', dir, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', '.'], {
      maxBuffer: 1 << 28,
    });
  return [tarOf(base), tarOf(upper)];
}

/** A docker-archive of the layers (skopeo from the shared hand-made oci-archive), tagged `ref`. */
async function dockerArchive(work: string, layers: Buffer[], ref: string): Promise<string> {
  const oci = join(work, 'image.oci.tar');
  writeFileSync(oci, await ociArchiveOfLayers(layers));
  const out = join(work, 'image.tar');
  execFileSync('skopeo', ['copy', '-q', `oci-archive:${oci}`, `docker-archive:${out}:${ref}`]);
  return out;
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' ')[4]!)
    .filter((m) => m.startsWith(dir + '/'));
}

/** Stop a child: SIGTERM, then SIGKILL after `ms`. */
async function stop(child: ChildProcess | undefined, ms = 5000): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

interface Client {
  call(method: string, req: object): Promise<Record<string, unknown>>;
  close(): void;
}

function snapshotsClient(socket: string): Client {
  const def = fromJSON(snapshotsDescriptor as Parameters<typeof fromJSON>[0], loaderOptions);
  const Ctor = grpc.makeGenericClientConstructor(
    def[serviceName] as grpc.ServiceDefinition,
    'Snapshots',
  );
  const client = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure());
  return {
    call: (method, req) =>
      new Promise((resolve, reject) => {
        (
          client as unknown as Record<
            string,
            (
              r: object,
              cb: (e: grpc.ServiceError | null, v: Record<string, unknown>) => void,
            ) => void
          >
        )[method]!.call(client, req, (err, value) => (err === null ? resolve(value) : reject(err)));
      }),
    close: () => client.close(),
  };
}

async function rejectsWith(p: Promise<unknown>, code: grpc.status, what: string): Promise<void> {
  await assert.rejects(p, (err: grpc.ServiceError) => {
    assert.equal(err.code, code, `${what}: got ${grpc.status[err.code]} (${err.details})`);
    return true;
  });
}

test(
  'containerd imports, runs and lists images through thinrelay snapshotter',
  { skip },
  async (t) => {
    const work = mkdtempSync(join(tmpdir(), 'thinrelay-snapctd-'));
    const stateDir = join(work, 'state');
    const ctdDir = join(work, 'containerd');
    const snapSocket = join(work, 'run/snapshotter.sock');
    const ctdSocket = join(ctdDir, 'containerd.sock');
    const procs: { snapshotter?: ChildProcess; containerd?: ChildProcess } = {};
    let client: Client | undefined;
    let snapLog = '';
    let ctdLog = '';
    t.after(async () => {
      client?.close();
      await stop(procs.containerd, 10_000);
      // What containerd (its shim, its temporary mounts) left under its root.
      for (const m of mountsUnder(ctdDir).reverse()) execFileSync('umount', ['-l', m]);
      await stop(procs.snapshotter);
      releaseStateDir(stateDir);
      rmSync(work, { recursive: true, force: true });
    });

    const layers = buildLayers(work);
    const diffIds = layers.map((l) => `sha256:${sha256(l)}`);
    const chainIds = chainIdsOf(diffIds);
    const archive = await dockerArchive(work, layers, 'thinrelay.test/snap:1');

    const snapshotter = (procs.snapshotter = spawn(
      process.execPath,
      [
        cliPath,
        'snapshotter',
        '--state-dir',
        stateDir,
        '--backend',
        'loop',
        '--socket',
        snapSocket,
      ],
      {
        env: {
          ...process.env,
          THINRELAY_CONFIG_FILE: 'none',
          THINRELAY_LOG_LEVEL: 'debug',
          THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '256M',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    ));
    snapshotter.stderr.on('data', (d: Buffer) => (snapLog += d.toString()));
    await until('the snapshotter socket', () => Promise.resolve(existsSync(snapSocket)));
    const st = statSync(snapSocket);
    assert.equal(st.mode & 0o777, 0o600, 'the socket is root-only by default');
    assert.equal(st.uid, 0);

    mkdirSync(ctdDir, { recursive: true });
    const config = join(ctdDir, 'config.toml');
    writeFileSync(
      config,
      [
        'version = 2',
        `root = "${ctdDir}/root"`,
        `state = "${ctdDir}/state"`,
        '[grpc]',
        `  address = "${ctdSocket}"`,
        '[proxy_plugins.thinrelay]',
        '  type = "snapshot"',
        `  address = "${snapSocket}"`,
        '',
      ].join('\n'),
    );
    const containerd = (procs.containerd = spawn('containerd', ['--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }));
    containerd.stderr.on('data', (d: Buffer) => (ctdLog += d.toString()));
    await until('the containerd socket', () => Promise.resolve(existsSync(ctdSocket)));
    const ctr = (...args: string[]): string => {
      try {
        return execFileSync('ctr', ['-a', ctdSocket, '-n', 'test', ...args], {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'pipe'],
        });
      } catch (err) {
        const e = err as { stderr?: string };
        throw new Error(
          `ctr ${args.join(' ')}: ${e.stderr ?? String(err)}\n-- snapshotter log:\n${snapLog.slice(-4000)}`,
          { cause: err },
        );
      }
    };

    await t.test('import unpacks the layers into thinrelay, named by chain ID', () => {
      ctr('images', 'import', '--snapshotter', 'thinrelay', archive);
      const names = ctr('snapshots', '--snapshotter', 'thinrelay', 'ls')
        .split('\n')
        .slice(1)
        .filter((l) => l.trim() !== '')
        .map((l) => l.trim().split(/\s+/));
      assert.deepEqual(
        names.map((n) => n[0]).sort(),
        [...chainIds].sort(),
        'committed snapshots = chain IDs',
      );
      assert.ok(
        names.every((n) => n.at(-1) === 'Committed'),
        JSON.stringify(names),
      );
      // thinrelay holds them as ready layers with those chain IDs, on sealed volumes.
      const blobs = queryState<{ chain_id: string; state: string; depth: number }>(
        stateDir,
        `SELECT b.chain_id, o.state, b.depth FROM blobs b JOIN storage_objects o ON o.id = b.volume_id
        WHERE b.status = 'ready' ORDER BY b.depth`,
      );
      assert.deepEqual(
        blobs.map((b) => [b.chain_id, b.state, b.depth]),
        chainIds.map((c, i) => [c, 'sealed', i + 1]),
      );
    });

    await t.test('ctr run prints a file from the image', () => {
      const out = ctr(
        'run',
        '--snapshotter',
        'thinrelay',
        '--rm',
        'thinrelay.test/snap:1',
        'snaprun1',
        '/bin/cat',
        '/etc/message',
      );
      assert.equal(out, 'hello from a thinrelay layer\n');
      // runc's rootfs mount (a loop device with autoclear) is gone with the container.
      assert.deepEqual(hostInventory(stateDir).loops, [], 'no loop device left attached');
    });

    await t.test('thinrelay gc leaves the layers containerd holds', async () => {
      const gc = await runCli(['gc', '--state-dir', stateDir, '--backend', 'loop', '--json'], {
        THINRELAY_CONFIG_FILE: 'none',
      });
      assert.equal(gc.code, 0, gc.stderr);
      const ready = queryState<{ chain_id: string }>(
        stateDir,
        `SELECT chain_id FROM blobs WHERE status = 'ready' ORDER BY depth`,
      );
      assert.deepEqual(
        ready.map((b) => b.chain_id),
        chainIds,
        `no image links them, containerd does: ${gc.stdout}`,
      );
      assert.equal(hostInventory(stateDir).poolFiles.length, 2);
    });

    await t.test('ctr snapshots prepare/info/usage/mounts/rm behave', async () => {
      ctr('snapshots', '--snapshotter', 'thinrelay', 'prepare', 'work1', chainIds[1]!);
      const info = JSON.parse(ctr('snapshots', '--snapshotter', 'thinrelay', 'info', 'work1')) as {
        Kind: string;
        Parent: string;
      };
      assert.equal(info.Parent, chainIds[1]);
      assert.equal(info.Kind, 'Active');
      const mounts = ctr('snapshots', '--snapshotter', 'thinrelay', 'mounts', '/mnt', 'work1');
      assert.match(mounts, /mount -t ext4 .*\/pool\/vol-\d+\.img \/mnt -o rw,loop/);
      const usage = ctr('snapshots', '--snapshotter', 'thinrelay', 'usage', 'work1');
      assert.match(usage, /work1/);
      const active = queryState<{ n: number }>(
        stateDir,
        `SELECT count(*) AS n FROM containerd_snapshots WHERE kind = 'active' AND state = 'ready'`,
      );
      assert.equal(active[0]!.n, 1);
      ctr('snapshots', '--snapshotter', 'thinrelay', 'rm', 'work1');
      // containerd removes it from the backend in its garbage collection, soon after.
      await until('the active snapshot released', () =>
        Promise.resolve(
          queryState<{ n: number }>(
            stateDir,
            `SELECT count(*) AS n FROM containerd_snapshots WHERE kind = 'active' AND state != 'removed'`,
          )[0]!.n === 0,
        ),
      );
      const files = hostInventory(stateDir).poolFiles;
      assert.equal(files.length, 2, `only the two layer volumes remain: ${files.join(', ')}`);
    });

    await t.test(
      'bad input gets the gRPC code containerd expects and changes nothing',
      async () => {
        client = snapshotsClient(snapSocket);
        const liveObjects = (): number =>
          queryState<{ n: number }>(
            stateDir,
            `SELECT count(*) AS n FROM storage_objects WHERE state != 'removed'`,
          )[0]!.n;
        const before = liveObjects();
        await rejectsWith(
          client.call('Prepare', { key: 'x/1/a', parent: 'x/1/sha256:missing' }),
          grpc.status.NOT_FOUND,
          'parent that does not exist',
        );
        await rejectsWith(
          client.call('Prepare', { key: 'a\0b' }),
          grpc.status.INVALID_ARGUMENT,
          'NUL',
        );
        await rejectsWith(
          client.call('Prepare', { key: 'k'.repeat(10 * 1024) }),
          grpc.status.INVALID_ARGUMENT,
          '10 KiB key',
        );
        await rejectsWith(client.call('Stat', { key: 'nope' }), grpc.status.NOT_FOUND, 'Stat');
        await rejectsWith(client.call('Remove', { key: 'nope' }), grpc.status.NOT_FOUND, 'Remove');
        assert.equal(liveObjects(), before, 'refused calls made no volume');
        // The committed layers containerd named through its metadata store: "test/N/<chain ID>".
        const parent = queryState<{ key: string }>(
          stateDir,
          `SELECT key FROM containerd_snapshots WHERE kind = 'committed' AND state = 'ready' ORDER BY id DESC LIMIT 1`,
        )[0]!.key;
        assert.ok(parent.endsWith('/' + chainIds[1]), parent);
        // Keys are opaque: slashes and dots are containerd's business, never a path here.
        const odd = 'x/2/../../etc/passwd';
        const prepared = await client.call('Prepare', { key: odd, parent });
        const [m] = prepared.mounts as { type: string; source: string; options: string[] }[];
        assert.equal(m!.type, 'ext4');
        assert.match(m!.source, new RegExp(`^${stateDir}/pool/vol-\\d+\\.img$`));
        assert.deepEqual(m!.options, ['rw', 'loop']);
        await rejectsWith(
          client.call('Prepare', { key: odd, parent }),
          grpc.status.ALREADY_EXISTS,
          'second Prepare of a key',
        );
        await rejectsWith(
          client.call('Commit', { name: parent, key: odd }),
          grpc.status.ALREADY_EXISTS,
          'Commit under an existing name',
        );
        const view = await client.call('View', { key: 'x/3/view', parent });
        assert.deepEqual((view.mounts as { options: string[] }[])[0]!.options, ['ro', 'loop']);
        await rejectsWith(
          client.call('Commit', { name: 'x/3/committed-view', key: 'x/3/view' }),
          grpc.status.FAILED_PRECONDITION,
          'Commit of a view',
        );
        await rejectsWith(
          client.call('Mounts', { key: parent }),
          grpc.status.FAILED_PRECONDITION,
          'Mounts of a committed snapshot',
        );
        await rejectsWith(
          client.call('Remove', { key: parent }),
          grpc.status.FAILED_PRECONDITION,
          'Remove of a committed snapshot with children',
        );
        const updated = await client.call('Update', {
          info: { name: odd, labels: { 'containerd.io/gc.root': 'x' } },
          update_mask: { paths: ['labels.containerd.io/gc.root'] },
        });
        assert.deepEqual((updated.info as { labels: object }).labels, {
          'containerd.io/gc.root': 'x',
        });
        await client.call('Remove', { key: 'x/3/view' });
        await client.call('Remove', { key: odd });
        assert.equal(liveObjects(), before, 'removed what it made');
      },
    );

    await t.test(
      'after the image is removed, no volume, loop device or mount is left',
      async () => {
        ctr('images', 'rm', '--sync', 'thinrelay.test/snap:1');
        await until(
          'containerd to remove the committed snapshots',
          () => Promise.resolve(hostInventory(stateDir).poolFiles.length === 0),
          30_000,
        );
        assert.deepEqual(hostInventory(stateDir), { loops: [], mounts: [], poolFiles: [] });
        assert.deepEqual(mountsUnder(ctdDir), []);
        assert.ok(!ctdLog.includes('panic'), ctdLog.slice(-2000));
      },
    );
  },
);
