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
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
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
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { chainIdsOf } from '../../host-agent/src/image/layer-source.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { debianRootTarball } from '../helpers/debian-root.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { criImages, type CriImages } from '../helpers/cri-images.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { snapshotsClient, type SnapshotsClient } from '../helpers/snapshots-client.js';
import { startOciRegistry, type OciRegistry } from '../helpers/oci-registry.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { queryState } from '../helpers/small-fs.js';
import { until } from '../helpers/until.js';

const skip = needsRootAndTools([
  'containerd',
  'ctr',
  'runc',
  'skopeo',
  'umoci',
  'debootstrap',
  'mkfs.ext4',
  'losetup',
]);

const bucket = 'thinrelay-images';
const execFileAsync = promisify(execFile);
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * Layer 1: the host's `cat` with its loader and libc (enough for runc to exec
 * it) and /etc/image (so each image's layers are its own); layer 2: a file.
 */
function buildLayers(work: string, image: string, message: string): Buffer[] {
  const base = join(work, image, 'layer1');
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
  mkdirSync(join(base, 'etc'));
  writeFileSync(join(base, 'etc/image'), `${image}\n`);
  const upper = join(work, image, 'layer2');
  mkdirSync(join(upper, 'etc'), { recursive: true });
  writeFileSync(join(upper, 'etc/message'), message);
  const tarOf = (dir: string): Buffer =>
    execFileSync('tar', ['-C', dir, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', '.'], {
      maxBuffer: 1 << 28,
    });
  return [tarOf(base), tarOf(upper)];
}

/**
 * The layers as an image: an OCI layout tagged `tag` (what the test registry
 * serves) and a docker-archive of it named `ref` (skopeo from the shared
 * hand-made oci-archive).
 */
async function imageOf(
  work: string,
  name: string,
  layers: Buffer[],
  tag: string,
  ref: string,
): Promise<{ layout: string; dockerArchive: string }> {
  const oci = join(work, `${name}.oci.tar`);
  writeFileSync(oci, await ociArchiveOfLayers(layers));
  const layout = join(work, `${name}.layout`);
  mkdirSync(layout);
  execFileSync('tar', ['-C', layout, '-xf', oci]);
  const indexPath = join(layout, 'index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8')) as {
    manifests: { annotations?: Record<string, string> }[];
  };
  index.manifests[0]!.annotations = { 'org.opencontainers.image.ref.name': tag };
  writeFileSync(indexPath, JSON.stringify(index));
  const dockerArchive = join(work, `${name}.docker.tar`);
  execFileSync('skopeo', [
    'copy',
    '-q',
    `oci-archive:${oci}`,
    `docker-archive:${dockerArchive}:${ref}`,
  ]);
  return { layout, dockerArchive };
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
    let client: SnapshotsClient | undefined;
    let cri: CriImages | undefined;
    const servers: { registry?: OciRegistry; s3?: S3Emulator } = {};
    let snapLog = '';
    let ctdLog = '';
    t.after(async () => {
      client?.close();
      cri?.close();
      await servers.registry?.stop();
      await servers.s3?.stop();
      await stop(procs.containerd, 10_000);
      // What containerd (its shim, its temporary mounts) left under its root.
      for (const m of mountsUnder(ctdDir).reverse()) execFileSync('umount', ['-l', m]);
      await stop(procs.snapshotter);
      releaseStateDir(stateDir);
      rmSync(work, { recursive: true, force: true });
    });

    const layers = buildLayers(work, 'snap', 'hello from a thinrelay layer\n');
    const chainIds = chainIdsOf(layers.map((l) => `sha256:${sha256(l)}`));
    const archive = (await imageOf(work, 'snap', layers, 'snap-1', 'thinrelay.test/snap:1'))
      .dockerArchive;
    // The image S3 delivers before containerd asks for it, and the one `ctr images pull` fetches.
    const sharedLayers = buildLayers(work, 'shared', 'hello from an S3-delivered layer\n');
    const sharedChainIds = chainIdsOf(sharedLayers.map((l) => `sha256:${sha256(l)}`));
    const shared = await imageOf(
      work,
      'shared',
      sharedLayers,
      'shared-1',
      'thinrelay.test/shared:1',
    );
    const pulledLayers = buildLayers(work, 'pulled', 'hello from a pulled layer\n');
    const pulled = await imageOf(
      work,
      'pulled',
      pulledLayers,
      'pulled-1',
      'thinrelay.test/pulled:1',
    );
    const registry = (servers.registry = await startOciRegistry([shared.layout, pulled.layout]));
    const s3 = (servers.s3 = await startS3Emulator());
    await s3.createBucket(bucket);

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
          // Room for the minbase root (sparse: only what is written takes space).
          THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '1G',
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
        // CRI (kubelet's path) pulls with the unpacker that labels layers for remote snapshotters.
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        '  snapshotter = "thinrelay"',
        `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${registry.host}"]`,
        `  endpoint = ["http://${registry.host}"]`,
        '',
      ].join('\n'),
    );
    const containerd = (procs.containerd = spawn('containerd', ['--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }));
    containerd.stderr.on('data', (d: Buffer) => (ctdLog += d.toString()));
    await until('the containerd socket', () => Promise.resolve(existsSync(ctdSocket)));
    const ctrIn = (namespace: string, ...args: string[]): string => {
      try {
        return execFileSync('ctr', ['-a', ctdSocket, '-n', namespace, ...args], {
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
    const ctr = (...args: string[]): string => ctrIn('test', ...args);
    const cliEnv = { THINRELAY_CONFIG_FILE: 'none', ...s3EnvFor(s3), THINRELAY_BUCKET: bucket };
    const thinrelay = async (...args: string[]): Promise<string> => {
      const r = await runCli([...args, '--state-dir', stateDir, '--backend', 'loop'], cliEnv);
      assert.equal(r.code, 0, `thinrelay ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    /** The highest snapshot row so far: rows above it are what came after. */
    const lastSnapshotRow = (): number =>
      queryState<{ n: number | null }>(
        stateDir,
        `SELECT max(id) AS n FROM containerd_snapshots`,
      )[0]!.n ?? 0;
    /** Layers containerd unpacked into thinrelay since `mark`: its extraction snapshots. */
    const extractionsSince = (mark: number): number =>
      queryState<{ n: number }>(
        stateDir,
        `SELECT count(*) AS n FROM containerd_snapshots WHERE id > ? AND kind = 'active' AND key LIKE '%/extract-%'`,
        mark,
      )[0]!.n;
    const liveSince = (mark: number): number =>
      queryState<{ n: number }>(
        stateDir,
        `SELECT count(*) AS n FROM containerd_snapshots WHERE id > ? AND state != 'removed'`,
        mark,
      )[0]!.n;

    await t.test('import unpacks the layers into thinrelay, named by chain ID', (tt) => {
      const started = performance.now();
      ctr('images', 'import', '--snapshotter', 'thinrelay', archive);
      tt.diagnostic(
        `fresh ctr images import of a 2-layer image: ${(performance.now() - started).toFixed(0)} ms`,
      );
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
        const poolBefore = hostInventory(stateDir).poolFiles;
        const rowsBefore = (): number =>
          queryState<{ n: number }>(
            stateDir,
            `SELECT count(*) AS n FROM containerd_snapshots WHERE state != 'removed'`,
          )[0]!.n;
        const snapshotsBefore = rowsBefore();
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
        await rejectsWith(
          client.call('Prepare', { key: 'x/9/ok', parent: 'p\0' }),
          grpc.status.INVALID_ARGUMENT,
          'NUL in the parent',
        );
        await rejectsWith(
          client.call('Prepare', { key: 'x/9/ok', parent: 'p'.repeat(10 * 1024) }),
          grpc.status.INVALID_ARGUMENT,
          '10 KiB parent',
        );
        await rejectsWith(
          client.call('Prepare', { key: 'x/9/ok', labels: { big: 'v'.repeat(5000) } }),
          grpc.status.INVALID_ARGUMENT,
          'label over 4 KiB',
        );
        await rejectsWith(
          client.call('Commit', { name: 'n\0', key: 'nope' }),
          grpc.status.INVALID_ARGUMENT,
          'Commit to a name with NUL',
        );
        await rejectsWith(
          client.call('Commit', { name: 'x/9/c', key: 'nope' }),
          grpc.status.NOT_FOUND,
          'Commit of a key that does not exist',
        );
        await rejectsWith(client.call('Stat', { key: 'nope' }), grpc.status.NOT_FOUND, 'Stat');
        await rejectsWith(client.call('Remove', { key: 'nope' }), grpc.status.NOT_FOUND, 'Remove');
        assert.equal(liveObjects(), before, 'refused calls made no volume');
        assert.equal(rowsBefore(), snapshotsBefore, 'refused calls recorded no snapshot');
        assert.deepEqual(hostInventory(stateDir).poolFiles, poolBefore);
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

        // A client that goes away mid-Prepare: the snapshot is then whole or absent, never half.
        for (const ms of [0, 5, 30]) {
          const key = `x/4/abandoned-${ms}`;
          const code = await client.abandon('Prepare', { key, parent }, ms);
          assert.ok([grpc.status.OK, grpc.status.CANCELLED].includes(code), `ended with ${code}`);
          // The service may still be working on it: it logs the key once prepared (~0.1 s).
          const logged = `"key":${JSON.stringify(key)}`;
          for (let i = 0; i < 40 && !snapLog.includes(logged); i++)
            await new Promise((r) => setTimeout(r, 50));
          await until('the service to settle the abandoned Prepare', () =>
            Promise.resolve(
              queryState<{ n: number }>(
                stateDir,
                `SELECT count(*) AS n FROM containerd_snapshots WHERE key = ? AND state = 'preparing'`,
                key,
              )[0]!.n === 0,
            ),
          );
          const made = await client.call('Stat', { key }).then(
            () => true,
            (err: grpc.ServiceError) => {
              assert.equal(err.code, grpc.status.NOT_FOUND);
              return false;
            },
          );
          if (made) {
            await client.call('Mounts', { key });
            await client.call('Remove', { key });
          }
        }
        assert.equal(liveObjects(), before, 'nothing left of the abandoned calls');
        assert.equal(rowsBefore(), snapshotsBefore);
        assert.deepEqual(hostInventory(stateDir).poolFiles, poolBefore);
      },
    );

    await t.test(
      'an image S3 delivered: a CRI pull fetches and applies none of its layers, import none',
      async () => {
        cri = criImages(ctdSocket);
        const ref = `${registry.host}/thinrelay/app:shared-1`;
        const layerDigests = sharedLayers.map((l) => `sha256:${sha256(l)}`);
        const runs = Number(process.env.THINRELAY_SNAPSHOTTER_SHARE_RUNS ?? '1');
        /** One CRI pull (then removal): its time, layers unpacked, layer blobs fetched. */
        const pullOnce = async (keep = false) => {
          const mark = lastSnapshotRow();
          const served = registry.requests.length;
          const started = performance.now();
          await cri!.pull(ref);
          const ms = performance.now() - started;
          const applied = extractionsSince(mark);
          const fetched = registry.requests
            .slice(served)
            .filter((r) => layerDigests.some((d) => r.startsWith('GET ') && r.endsWith(d))).length;
          if (!keep) {
            await cri!.remove(ref);
            await until(
              'containerd to remove the pulled snapshots',
              () => Promise.resolve(liveSince(mark) === 0),
              30_000,
            );
          }
          return { ms, applied, fetched };
        };
        const median = (xs: number[]): number =>
          [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

        // Not delivered yet: containerd fetches and unpacks both layers.
        const fresh = [];
        for (let i = 0; i < runs; i++) fresh.push(await pullOnce());
        assert.deepEqual(
          fresh.map((r) => [r.applied, r.fetched]),
          fresh.map(() => [2, 2]),
        );

        // S3 delivers the same image (its docker-archive) into the same state dir.
        await s3.putObject(bucket, 'images/shared.tar', readFileSync(shared.dockerArchive));
        const processed = JSON.parse(
          await thinrelay('process-image', '--s3-key', 'images/shared.tar', '--json'),
        ) as { outcome: string };
        assert.equal(processed.outcome, 'complete');
        const held = queryState<{ chain_id: string }>(
          stateDir,
          `SELECT chain_id FROM blobs WHERE status = 'ready' AND chain_id IN (?, ?) ORDER BY depth`,
          ...sharedChainIds,
        );
        assert.deepEqual(
          held.map((b) => b.chain_id),
          sharedChainIds,
        );

        const sharedPulls = [];
        for (let i = 0; i < runs; i++) sharedPulls.push(await pullOnce(i === runs - 1));
        assert.deepEqual(
          sharedPulls.map((r) => [r.applied, r.fetched]),
          sharedPulls.map(() => [0, 0]),
          'every layer was found in thinrelay: none fetched, none applied',
        );
        // containerd recorded thinrelay's layers as its committed snapshots, named by chain ID.
        const names = ctrIn('k8s.io', 'snapshots', '--snapshotter', 'thinrelay', 'ls')
          .split('\n')
          .slice(1)
          .filter((l) => l.trim() !== '')
          .map((l) => l.trim().split(/\s+/)[0]);
        assert.deepEqual(names.sort(), [...sharedChainIds].sort());
        // The recorded layers run: the container's snapshot is a clone of the S3-delivered top layer.
        const out = ctrIn(
          'k8s.io',
          'run',
          '--snapshotter',
          'thinrelay',
          '--rm',
          ref,
          'sharedrun1',
          '/bin/cat',
          '/etc/message',
        );
        assert.equal(out, 'hello from an S3-delivered layer\n');

        // Import of the same archive now finds every layer in containerd's own metadata.
        const mark = lastSnapshotRow();
        const started = performance.now();
        ctrIn('k8s.io', 'images', 'import', '--snapshotter', 'thinrelay', shared.dockerArchive);
        const importMs = performance.now() - started;
        assert.equal(extractionsSince(mark), 0, 'import applied no layer');
        t.diagnostic(
          `CRI pull of a 2-layer image, median of ${runs}: fresh ${median(fresh.map((r) => r.ms)).toFixed(0)} ms ` +
            `(2 layers fetched and applied), delivered through S3 first ${median(sharedPulls.map((r) => r.ms)).toFixed(0)} ms ` +
            `(0 fetched, 0 applied); ctr images import afterwards ${importMs.toFixed(0)} ms, 0 applied`,
        );
      },
    );

    await t.test('ctr images pull from a registry, then ctr run', async () => {
      const ref = `${registry.host}/thinrelay/app:pulled-1`;
      const mark = lastSnapshotRow();
      // Not execFileSync: the registry answers from this process's event loop.
      await execFileAsync(
        'ctr',
        [
          '-a',
          ctdSocket,
          '-n',
          'test',
          'images',
          'pull',
          '--plain-http',
          '--snapshotter',
          'thinrelay',
          ref,
        ],
        { maxBuffer: 1 << 24 },
      );
      assert.equal(extractionsSince(mark), 2, 'both layers unpacked into thinrelay');
      const out = ctr(
        'run',
        '--snapshotter',
        'thinrelay',
        '--rm',
        ref,
        'pullrun1',
        '/bin/cat',
        '/etc/message',
      );
      assert.equal(out, 'hello from a pulled layer\n');
    });

    await t.test(
      'an OCI archive built with umoci and skopeo on a Debian minbase root imports and runs',
      () => {
        const dir = join(work, 'minbase');
        mkdirSync(join(dir, 'app/etc'), { recursive: true });
        writeFileSync(join(dir, 'app/etc/message'), 'hello from a minbase image\n');
        const sh = (script: string): void => {
          execFileSync('sh', ['-euc', script], { cwd: dir, stdio: 'ignore' });
        };
        sh(
          `umoci init --layout L
           umoci new --image L:empty
           umoci raw add-layer --image L:empty --tag base '${debianRootTarball(work)}'
           tar -C app --owner=0 --group=0 --numeric-owner -cf app.tar etc
           umoci raw add-layer --image L:base --tag 1 app.tar
           skopeo copy -q oci:L:1 oci-archive:minbase.oci.tar:1`,
        );
        const mark = lastSnapshotRow();
        ctr(
          'images',
          'import',
          '--base-name',
          'thinrelay.test/minbase',
          '--snapshotter',
          'thinrelay',
          join(dir, 'minbase.oci.tar'),
        );
        assert.equal(extractionsSince(mark), 2, 'the root and the app layer');
        const out = ctr(
          'run',
          '--snapshotter',
          'thinrelay',
          '--rm',
          'thinrelay.test/minbase:1',
          'minrun1',
          '/bin/sh',
          '-c',
          'cat /etc/message; . /etc/os-release; echo "$ID $VERSION_ID"',
        );
        assert.equal(out, 'hello from a minbase image\ndebian 12\n');
        rmSync(dir, { recursive: true, force: true });
      },
    );

    await t.test(
      'after the image is removed, no volume, loop device or mount is left',
      async () => {
        // The S3 image goes first: its layers stay while containerd holds them.
        await thinrelay('remove', '--force', 'images/shared.tar');
        await thinrelay('gc');
        const sharedHeld = (): number =>
          queryState<{ n: number }>(
            stateDir,
            `SELECT count(*) AS n FROM blobs WHERE status = 'ready' AND chain_id IN (?, ?)`,
            ...sharedChainIds,
          )[0]!.n;
        assert.equal(sharedHeld(), 2, 'containerd still holds the S3-delivered layers');
        ctr('images', 'rm', '--sync', 'thinrelay.test/snap:1', 'thinrelay.test/minbase:1');
        ctr('images', 'rm', '--sync', `${registry.host}/thinrelay/app:pulled-1`);
        // CRI recorded its pull under the tag, the repo digest and the image id: all go.
        const criNames = ctrIn('k8s.io', 'images', 'ls', '-q')
          .split('\n')
          .filter((l) => l !== '');
        ctrIn('k8s.io', 'images', 'rm', '--sync', ...criNames);
        await until(
          'containerd to remove the committed snapshots',
          () => Promise.resolve(hostInventory(stateDir).poolFiles.length === 0),
          30_000,
        ).catch((err: unknown) => {
          const left = queryState(
            stateDir,
            `SELECT id, key, kind, state FROM containerd_snapshots WHERE state != 'removed'`,
          );
          throw new Error(`${String(err)}; left: ${JSON.stringify(left)}`, { cause: err });
        });
        await thinrelay('gc');
        assert.equal(sharedHeld(), 0);
        assert.deepEqual(hostInventory(stateDir), { loops: [], mounts: [], poolFiles: [] });
        assert.deepEqual(mountsUnder(ctdDir), []);
        assert.ok(!ctdLog.includes('panic'), ctdLog.slice(-2000));
      },
    );
  },
);
