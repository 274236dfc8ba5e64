/**
 * Tests that need root (loop devices, mounts) or system tools say so when
 * skipped. Under CI (.ci/run sets THINRELAY_TESTS_REQUIRED=1) a missing
 * prerequisite fails the test file instead: CI installs every tool, so a skip
 * there would only hide a broken install.
 */
import { execFileSync } from 'node:child_process';

export const isRoot = process.getuid?.() === 0;

function unlessRequired(reason: string | false): string | false {
  if (reason !== false && process.env.THINRELAY_TESTS_REQUIRED === '1')
    throw new Error(`THINRELAY_TESTS_REQUIRED=1 but this test ${reason}`);
  return reason;
}

export const needsRoot: string | false = unlessRequired(
  isRoot ? false : 'needs root (loop devices, mkfs, mounts)',
);

/** A skip reason when not root or one of `tools` is not on PATH; false when the test can run. */
export function needsRootAndTools(tools: readonly string[]): string | false {
  if (needsRoot !== false) return needsRoot;
  const missing = tools.filter((t) => {
    try {
      execFileSync('sh', ['-c', `command -v ${t}`]);
      return false;
    } catch {
      return true;
    }
  });
  return unlessRequired(
    missing.length === 0 ? false : `needs ${missing.join(', ')} (.ci/run installs them)`,
  );
}
