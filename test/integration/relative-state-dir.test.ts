/**
 * A relative --state-dir (resolved against the CLI's working directory) works
 * like an absolute one: process-image releases its work mount, gc runs, and
 * nothing is left mounted or attached that the database does not account for.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { runCli } from '../helpers/cli.js';
import { assertHostMatchesStore, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';

test(
  'a relative --state-dir leaks no mount and gc works with it',
  { skip: needsRoot },
  async (t) => {
    const s3 = await startS3Emulator();
    t.after(() => s3.stop());
    await s3.createBucket('thinrelay-rel');
    await s3.putObject(
      'thinrelay-rel',
      'images/rel.tar',
      await buildSampleRootfs({ payloadBytes: 1024 ** 2, seed: 'rel' }),
    );
    const cwd = mkdtempSync(join(tmpdir(), 'thinrelay-relcwd-'));
    const stateDir = join(cwd, 'st', 'rel');
    mkdirSync(stateDir, { recursive: true });
    t.after(() => {
      releaseStateDir(stateDir);
      rmSync(cwd, { recursive: true, force: true });
    });
    const env = {
      ...s3EnvFor(s3),
      THINRELAY_BUCKET: 'thinrelay-rel',
      THINRELAY_RESERVE_BYTES: '0',
    };
    const rel = ['--state-dir', 'st/rel'];

    const first = await runCli([...rel, 'process-image', '--s3-key', 'images/rel.tar'], env, {
      cwd,
    });
    assert.equal(first.code, 0, first.stderr);
    assertHostMatchesStore(stateDir);

    const gc = await runCli([...rel, 'gc', '--json'], env, { cwd });
    assert.equal(gc.code, 0, gc.stderr);
    assertHostMatchesStore(stateDir);

    // The same path through the environment.
    const again = await runCli(
      ['process-image', '--s3-key', 'images/rel.tar'],
      {
        ...env,
        THINRELAY_STATE_DIR: 'st/rel',
      },
      { cwd },
    );
    assert.equal(again.code, 0, again.stderr);
    assertHostMatchesStore(stateDir);
  },
);
