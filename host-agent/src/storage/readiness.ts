/** Readiness checks every backend makes the same way: root, a device node, tools on PATH. */
import { existsSync } from 'node:fs';
import { hasCommand } from '../sys/exec.js';
import type { ReadinessCheck } from './backend.js';

export function rootCheck(why: string): ReadinessCheck {
  const root = process.getuid?.() === 0;
  return {
    name: 'root',
    ok: root,
    detail: root ? 'running as root' : 'not root',
    hint: `run as root (${why})`,
  };
}

export function deviceNodeCheck(name: string, path: string, hint: string): ReadinessCheck {
  const ok = existsSync(path);
  return { name, ok, detail: `${path} ${ok ? 'present' : 'missing'}`, hint };
}

/** One check per tool, each naming the package to install when it is missing. */
export async function toolChecks(
  tools: readonly (readonly [tool: string, pkg: string])[],
): Promise<ReadinessCheck[]> {
  return Promise.all(
    tools.map(async ([tool, pkg]) => {
      const ok = await hasCommand(tool);
      return {
        name: tool,
        ok,
        detail: ok ? 'found' : 'not on PATH',
        hint: `apt-get install ${pkg}`,
      };
    }),
  );
}
