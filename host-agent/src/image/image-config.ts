/**
 * The image config (OCI image-spec config.md / docker's image JSON): the
 * layers' diff_ids to verify against, and what a VM's init needs to run the
 * image (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts, Labels,
 * architecture), kept with the image.
 */
import { ImageError } from '../errors.js';
import { sha256Of } from './manifest.js';

export interface RunConfig {
  architecture: string | null;
  os: string | null;
  entrypoint: string[] | null;
  cmd: string[] | null;
  env: string[];
  workingDir: string | null;
  user: string | null;
  exposedPorts: string[];
  labels: Record<string, string>;
}

export interface ParsedConfig {
  diffIds: string[];
  run: RunConfig;
}

function strings(v: unknown): string[] | null {
  return Array.isArray(v) && v.every((s) => typeof s === 'string') ? v : null;
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

export function parseImageConfig(doc: unknown): ParsedConfig {
  const o = doc as {
    rootfs?: { type?: unknown; diff_ids?: unknown };
    config?: Record<string, unknown>;
  } | null;
  if (o === null || typeof o !== 'object' || !Array.isArray(o.rootfs?.diff_ids))
    throw new ImageError('IMAGE_MANIFEST_INVALID', 'the image config has no rootfs.diff_ids');
  const diffIds = (o.rootfs.diff_ids as unknown[]).map((d, i) =>
    sha256Of(d, `config rootfs.diff_ids[${i}]`),
  );
  const c = o.config ?? {};
  const labels: Record<string, string> = {};
  if (c.Labels !== null && typeof c.Labels === 'object') {
    for (const [k, v] of Object.entries(c.Labels as Record<string, unknown>))
      if (typeof v === 'string') labels[k] = v;
  }
  const top = doc as Record<string, unknown>;
  return {
    diffIds,
    run: {
      architecture: str(top.architecture),
      os: str(top.os),
      entrypoint: strings(c.Entrypoint),
      cmd: strings(c.Cmd),
      env: strings(c.Env) ?? [],
      workingDir: str(c.WorkingDir),
      user: str(c.User),
      exposedPorts:
        c.ExposedPorts !== null && typeof c.ExposedPorts === 'object'
          ? Object.keys(c.ExposedPorts).sort()
          : [],
      labels,
    },
  };
}
