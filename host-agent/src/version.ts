/**
 * Build information: the package version (and the git commit when built from
 * a checkout). The bundler writes them in; unbundled runs read package.json.
 */
import { createRequire } from 'node:module';

declare const THINRELAY_BUILD: { version: string; commit: string } | undefined;

function unbundled(): { version: string; commit: string } {
  // dist/host-agent/src/version.js → the repository's package.json.
  const pkg = createRequire(import.meta.url)('../../../package.json') as { version: string };
  return { version: pkg.version, commit: 'unknown' };
}

export const build: { version: string; commit: string } =
  typeof THINRELAY_BUILD === 'object' ? THINRELAY_BUILD : unbundled();

/** One line: `thinrelay 0.2.0 (commit abc1234, node v26.12.1, linux x64)`. */
export function versionLine(): string {
  return `thinrelay ${build.version} (commit ${build.commit}, node ${process.version}, ${process.platform} ${process.arch})`;
}
