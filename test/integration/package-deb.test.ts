/**
 * The Debian package: built from this tree (scripts/package-deb.sh, what
 * `npm run package` runs after the build), installed with dpkg -i, run from
 * outside the repository with a bare environment (`thinrelay --version`,
 * `thinrelay doctor`), then purged — nothing of it left behind.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string };
const root = process.getuid?.() === 0;
const hasDpkg = spawnSync('dpkg', ['--version']).status === 0;
const skip = !root ? 'needs root (dpkg -i)' : !hasDpkg ? 'needs dpkg' : false;

const out = mkdtempSync(join(tmpdir(), 'thinrelay-deb-'));
after(() => {
  if (root && hasDpkg && existsSync('/usr/lib/thinrelay')) dpkg(['--purge', 'thinrelay']);
  rmSync(out, { recursive: true, force: true });
});

/** What an operator's shell has: no repository, no node_modules, no npm. */
/** dpkg, waiting while another dpkg/apt run holds the lock (a shared CI machine). */
function dpkg(args: string[]): void {
  const deadline = Date.now() + 300_000;
  for (;;) {
    const r = spawnSync('dpkg', args, { encoding: 'utf8' });
    if (r.status === 0) return;
    if (!/lock/i.test(r.stderr) || Date.now() > deadline)
      throw new Error(`dpkg ${args.join(' ')}: ${r.stderr}`);
    execFileSync('sleep', ['2']);
  }
}

const bare = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8' };

test(
  'the .deb builds, installs, runs from outside the repository, and purges clean',
  { skip },
  () => {
    const deb = execFileSync('bash', [join(repo, 'scripts/package-deb.sh'), out], {
      encoding: 'utf8',
    }).trim();
    const arch = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim();
    assert.equal(deb, join(out, `thinrelay_${pkg.version}_${arch}.deb`));

    const field = (name: string): string =>
      execFileSync('dpkg-deb', ['--field', deb, name], { encoding: 'utf8' }).trim();
    const major = process.versions.node.split('.')[0]!;
    assert.equal(field('Version'), pkg.version);
    assert.match(
      field('Depends'),
      new RegExp(`nodejs \\(>= ${major}\\), nodejs \\(<< ${Number(major) + 1}\\)`),
    );
    const files = execFileSync('dpkg-deb', ['--contents', deb], { encoding: 'utf8' });
    for (const path of [
      './usr/bin/thinrelay',
      './usr/lib/thinrelay/thinrelay.mjs',
      './usr/lib/thinrelay/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
      './lib/systemd/system/thinrelay-agent.service',
      './usr/lib/modules-load.d/thinrelay.conf',
      './etc/thinrelay/agent.env',
    ])
      assert.ok(files.includes(path), `${path} in the package`);
    const control = mkdtempSync(join(out, 'control-'));
    execFileSync('dpkg-deb', ['--control', deb, control]);
    assert.equal(
      readFileSync(join(control, 'conffiles'), 'utf8').trim(),
      '/etc/thinrelay/agent.env',
    );

    dpkg(['-i', deb]);
    assert.equal(existsSync('/usr/bin/thinrelay'), true);
    const run = (args: string[]) =>
      spawnSync('/usr/bin/thinrelay', args, { cwd: '/', env: bare, encoding: 'utf8' });
    const version = run(['--version']);
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, new RegExp(`^thinrelay ${pkg.version.replace(/\./g, '\\.')} \\(`));
    // The packaged addon opens a database: a read-only command on a fresh state dir says "no state".
    const fresh = join(out, 'fresh-state');
    const doctor = run(['doctor', '--state-dir', fresh]);
    assert.equal(doctor.status, 0, doctor.stdout + doctor.stderr);
    assert.match(doctor.stdout, /^state database +pass/m);
    const plain = run(['doctor']);
    assert.equal(plain.status, 0, plain.stdout + plain.stderr);
    assert.equal(existsSync(fresh), false, 'doctor creates nothing');
    const images = run(['images', '--state-dir', fresh]);
    assert.equal(images.status, 4, images.stderr);
    // The packaged SQLite addon really loads: gc creates, migrates and reads a database.
    const state = join(out, 'state');
    const gc = run(['gc', '--json', '--state-dir', state]);
    assert.equal(gc.status, 0, gc.stderr);
    assert.deepEqual(JSON.parse(gc.stdout), { actions: [] });

    dpkg(['--purge', 'thinrelay']);
    for (const path of ['/usr/bin/thinrelay', '/usr/lib/thinrelay', '/etc/thinrelay/agent.env'])
      assert.equal(existsSync(path), false, `${path} removed`);
    rmSync(state, { recursive: true, force: true });
  },
);
