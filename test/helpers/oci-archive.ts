/**
 * Shared by the layer tests: one image of an OCI layout as an oci-archive, tarred as skopeo lays it
 * out (blobs first, index.json last).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
export { needsRootAndTools } from './root.js';

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
