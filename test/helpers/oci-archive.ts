/**
 * Shared by the layer tests: one image of an OCI layout as an oci-archive, tarred as skopeo lays it
 * out (blobs first, index.json last); or one made by hand from plain-tar layers.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packTar } from './tar-fixtures.js';
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

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * A hand-made oci-archive of plain-tar layers (no tools needed), in skopeo's
 * order: blobs first, oci-layout and index.json last.
 */
export async function ociArchiveOfLayers(layers: readonly Buffer[]): Promise<Buffer> {
  const blobs = new Map<string, Buffer>();
  const blob = (b: Buffer, mediaType: string): object => {
    blobs.set(sha256(b), b);
    return { mediaType, digest: `sha256:${sha256(b)}`, size: b.length };
  };
  const config = blob(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha256(l)}`) },
      }),
    ),
    'application/vnd.oci.image.config.v1+json',
  );
  const manifest = blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config,
        layers: layers.map((l) => blob(l, 'application/vnd.oci.image.layer.v1.tar')),
      }),
    ),
    'application/vnd.oci.image.manifest.v1+json',
  );
  return packTar([
    { name: 'blobs/', type: 'directory', mode: 0o755 },
    { name: 'blobs/sha256/', type: 'directory', mode: 0o755 },
    ...[...blobs].map(([hex, content]) => ({ name: `blobs/sha256/${hex}`, mode: 0o644, content })),
    { name: 'oci-layout', mode: 0o644, content: '{"imageLayoutVersion":"1.0.0"}' },
    {
      name: 'index.json',
      mode: 0o644,
      content: JSON.stringify({ schemaVersion: 2, manifests: [manifest] }),
    },
  ]);
}
