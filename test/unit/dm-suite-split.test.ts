/**
 * How scripts/test-dm/run.sh splits the devicemapper suite over its two
 * User-Mode Linux guests (--plan: the split, no guest booted) and how a test
 * file reads its parts (test/dm/suite-parts.ts): every file runs, every part
 * of a cut file runs in exactly one guest, and the guests' recorded seconds
 * come out close.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { inParts, partsOf } from '../dm/suite-parts.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));

describe('suite parts (THINRELAY_DM_PARTS)', () => {
  test('a named file gets its parts; unit i is in part (i mod n) + 1; others run whole', () => {
    const spec = 'dm-crash.test.js=2,4/10 dm-lifecycle.test.js=1/3';
    const crash = partsOf('dm-crash.test.js', spec);
    assert.deepEqual(crash, { parts: [2, 4], of: 10 });
    assert.deepEqual(
      [0, 1, 2, 3, 11, 13, 21].map((i) => inParts(crash, i)),
      [false, true, false, true, true, true, true],
    );
    const life = partsOf('dm-lifecycle.test.js', spec);
    assert.deepEqual(
      [0, 1, 2].map((i) => inParts(life, i)),
      [true, false, false],
    );
    assert.equal(partsOf('dm-layers.test.js', spec), null);
    assert.equal(inParts(null, 5), true);
    assert.equal(partsOf('dm-crash.test.js', ''), null);
  });

  test('a malformed item or a part out of range is an error, not a silently empty file', () => {
    assert.throws(() => partsOf('x.test.js', 'x.test.js=1of3'), /must look like/);
    assert.throws(() => partsOf('x.test.js', 'x.test.js=0/3'), /must be 1\.\.3/);
    assert.throws(() => partsOf('x.test.js', 'x.test.js=4/3'), /must be 1\.\.3/);
  });
});

/** `run.sh --plan`'s lines: each guest's THINRELAY_DM_PARTS, files and recorded seconds. */
function plan(): { parts: string; files: string[]; seconds: number }[] {
  const out = execFileSync('bash', ['scripts/test-dm/run.sh', '--plan'], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, THINRELAY_DM_UML_INSTANCES: '2' },
  });
  return out
    .trim()
    .split('\n')
    .map((line) => {
      const m =
        /^guest \d runs: (?:THINRELAY_DM_PARTS='([^']*)' )?node --test .*? (dist\/test\/dm\/.*) \(about (\d+) s recorded\)$/.exec(
          line,
        );
      assert.ok(m !== null, `a guest line: ${line}`);
      return { parts: m[1] ?? '', files: m[2]!.split(' '), seconds: Number(m[3]) };
    });
}

describe('run.sh --plan: the split of the dm suite over two guests', () => {
  test('every file runs; each part of a cut file in exactly one guest; the guests within a part of each other', () => {
    const durations = new Map<string, number[]>();
    for (const line of readFileSync(`${root}/scripts/test-dm/durations.txt`, 'utf8').split('\n')) {
      if (line.startsWith('#') || line.trim() === '') continue;
      const [file, seconds] = line.trim().split(/\s+/);
      durations.set(file!, seconds!.split('+').map(Number));
    }
    const suite = execFileSync('find', ['dist/test/dm', '-name', '*.test.js'], {
      cwd: root,
      encoding: 'utf8',
    })
      .trim()
      .split('\n')
      .map((f) => basename(f))
      .sort();
    const guests = plan();
    assert.equal(guests.length, 2);
    const ran = new Set(guests.flatMap((g) => g.files.map((f) => basename(f))));
    assert.deepEqual([...ran].sort(), suite, 'every dm test file runs in some guest');
    let cut = 0;
    for (const file of suite) {
      const n = durations.get(file)?.length ?? 1;
      const seen: number[] = [];
      for (const g of guests) {
        if (!g.files.some((f) => basename(f) === file)) continue;
        const p = partsOf(file, g.parts);
        seen.push(...(p === null ? Array.from({ length: n }, (_, k) => k + 1) : p.parts));
        if (p !== null) assert.equal(p.of, n, `${file}: cut into the parts durations.txt lists`);
      }
      assert.deepEqual(
        seen.sort((a, b) => a - b),
        Array.from({ length: n }, (_, k) => k + 1),
        `${file}: each of its ${n} part(s) in exactly one guest`,
      );
      if (guests.every((g) => g.files.some((f) => basename(f) === file))) cut++;
    }
    assert.ok(
      cut >= 2,
      'the long files (the kill -9 sweep, the pool lifecycle) run in both guests',
    );
    // A file durations.txt does not list counts as 300 s (run.sh says so).
    const pieces = suite.flatMap((f) => durations.get(f) ?? [300]);
    const total = pieces.reduce((a, b) => a + b, 0);
    const biggest = Math.max(...pieces);
    assert.equal(
      guests[0]!.seconds + guests[1]!.seconds,
      total,
      'the recorded seconds are all assigned',
    );
    assert.ok(
      Math.abs(guests[0]!.seconds - guests[1]!.seconds) <= biggest,
      `guests at ${guests[0]!.seconds} s and ${guests[1]!.seconds} s`,
    );
  });
});
