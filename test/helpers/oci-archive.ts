/**
 * Shared by the layer tests: skip unless root and the image tools are there,
 * and one image of an OCI layout as an oci-archive, tarred as skopeo lays it
 * out (blobs first, index.json last).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needsRoot } from './root.js';

/** A skip reason when not root or a tool is missing; false when the test can run. */
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
  return missing.length === 0 ? false : `needs ${missing.join(', ')}`;
}

/** Image `tag` of `layout` alone as an oci-archive (a copy of the layout is made under `scratch`). */
export function ociArchiveOfTag(layout: string, tag: string, scratch: string): Buffer {
  const copy = mkdtempSync(join(scratch, 'archive-'));
  cpSync(layout, copy, { recursive: true });
  const index = JSON.parse(readFileSync(join(copy, 'index.json'), 'utf8')) as {
    manifests: { annotations?: Record<string, string> }[];
  };
  index.manifests = index.manifests.filter(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag,
  );
  writeFileSync(join(copy, 'index.json'), JSON.stringify(index));
  return execFileSync('tar', ['-C', copy, '-cf', '-', 'blobs', 'oci-layout', 'index.json'], {
    maxBuffer: 1 << 30,
  });
}
