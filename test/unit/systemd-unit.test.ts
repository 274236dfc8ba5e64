/**
 * The shipped systemd unit parses (systemd-analyze verify, with the binary
 * path pointed at something that exists here) and keeps the settings the
 * agent depends on.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const unitPath = fileURLToPath(
  new URL('../../../deploy/systemd/thinrelay-agent.service', import.meta.url),
);
const unit = readFileSync(unitPath, 'utf8');

function hasAnalyze(): boolean {
  try {
    execFileSync('systemd-analyze', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('the agent unit drains on SIGTERM within its stop timeout', () => {
  assert.match(unit, /^KillSignal=SIGTERM$/m);
  const stop = Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)?.[1]);
  assert.ok(stop > 60, 'TimeoutStopSec must exceed the default 60 s drain');
  // doctor --agent first, then the agent in the same (main) process.
  assert.match(
    unit,
    /^ExecStart=\/bin\/sh -c '\/usr\/bin\/thinrelay doctor --agent && exec \/usr\/bin\/thinrelay agent'$/m,
  );
  assert.match(unit, /^EnvironmentFile=\/etc\/thinrelay\/agent\.env$/m);
  assert.match(unit, /^ProtectSystem=strict$/m);
  assert.match(unit, /^ReadWritePaths=\/var\/lib\/thinrelay$/m);
});

test(
  'systemd-analyze verify accepts the unit',
  { skip: !hasAnalyze() && 'no systemd-analyze' },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'thinrelay-unit-'));
    try {
      const copy = join(dir, 'thinrelay-agent.service');
      writeFileSync(copy, unit.replaceAll('/usr/bin/thinrelay', process.execPath));
      // verify exits 0 on unknown keys: its warnings on stderr are the verdict.
      const r = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stderr + r.stdout, /thinrelay-agent\.service:\d+/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("the unit's Documentation= page and anchor exist in the repository", () => {
  const link =
    /^Documentation=https:\/\/github\.com\/thinrelay\/thinrelay\/blob\/main\/(\S+\.md)#(\S+)$/m.exec(
      unit,
    );
  assert.ok(link !== null, 'Documentation= points at a section of a document in the repository');
  const [, page, anchor] = link;
  const doc = readFileSync(fileURLToPath(new URL(`../../../${page}`, import.meta.url)), 'utf8');
  // GitHub's anchors: lower case, punctuation dropped, spaces as '-'.
  const anchors = [...doc.matchAll(/^#+ (.+)$/gm)].map((m) =>
    m[1]!
      .toLowerCase()
      .replace(/[^a-z0-9 _-]/g, '')
      .replace(/ /g, '-'),
  );
  assert.ok(anchors.includes(anchor!), `#${anchor} is not a heading of ${page}`);
});
