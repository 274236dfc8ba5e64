/**
 * Container images built offline with real tools for the image tests:
 * umoci builds an OCI layout (a base layer; an upper layer with explicit
 * whiteouts, a directory replaced by a file and a file by a directory, a
 * directory whose mode and time change; a run config), one hand-made
 * tar+zstd layer adds an opaque whiteout placed after its directory's other
 * entries (umoci never writes one), skopeo converts the result to
 * docker-archive and oci-archive, and `umoci raw unpack` gives the
 * reference tree. Needs root and the Debian packages umoci, skopeo, zstd.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

export interface OciFixture {
  layout: string;
  tag: string;
  /** `umoci raw unpack` of the image: the expected root filesystem. */
  reference: string;
  dockerArchive: string;
  ociArchive: string;
  /** The same image with its top layer as tar+zstd. */
  ociZstdLayerArchive: string;
}

const sh = (script: string, cwd: string): Promise<unknown> =>
  execa('sh', ['-euc', script], { cwd });

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

function writeBlob(layout: string, data: Buffer, mediaType: string): Descriptor {
  const hex = sha256(data);
  fs.writeFileSync(join(layout, 'blobs/sha256', hex), data);
  return { mediaType, digest: `sha256:${hex}`, size: data.length };
}

function readBlob(layout: string, digest: string): Buffer {
  return fs.readFileSync(join(layout, 'blobs/sha256', digest.slice(7)));
}

/** Appends a layer to the image `from`, tagging the result `to` (field-notes §8). */
export function appendLayer(
  layout: string,
  from: string,
  to: string,
  layer: Buffer,
  mediaType: string,
  diffId: string,
  configEdit: (config: Record<string, unknown>) => void = () => undefined,
): void {
  const index = JSON.parse(fs.readFileSync(join(layout, 'index.json'), 'utf8')) as {
    manifests: Descriptor[];
  };
  const ref = index.manifests.find(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] === from,
  )!;
  const manifest = JSON.parse(readBlob(layout, ref.digest).toString()) as {
    config: Descriptor;
    layers: Descriptor[];
  };
  const config = JSON.parse(readBlob(layout, manifest.config.digest).toString()) as {
    rootfs: { diff_ids: string[] };
    history?: unknown[];
  };
  config.rootfs.diff_ids.push(`sha256:${diffId}`);
  config.history?.push({ created_by: 'hand-made layer' });
  configEdit(config);
  manifest.layers.push(writeBlob(layout, layer, mediaType));
  manifest.config = writeBlob(
    layout,
    Buffer.from(JSON.stringify(config)),
    manifest.config.mediaType,
  );
  const desc = writeBlob(layout, Buffer.from(JSON.stringify(manifest)), ref.mediaType);
  index.manifests = index.manifests.filter(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] !== to,
  );
  index.manifests.push({ ...desc, annotations: { 'org.opencontainers.image.ref.name': to } });
  fs.writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
}

/** A plain tar of `entries` (paths relative to `dir`), in the order given, as GNU tar writes it with xattrs. */
export async function tarOf(dir: string, entries: string[]): Promise<Buffer> {
  const r = await execa(
    'tar',
    [
      '--xattrs',
      '--xattrs-include=*',
      '--numeric-owner',
      '--no-recursion',
      '-C',
      dir,
      '-cf',
      '-',
      ...entries,
    ],
    { encoding: 'buffer' },
  );
  return Buffer.from(r.stdout);
}

export async function buildOciFixture(work: string): Promise<OciFixture> {
  const layout = join(work, 'L');
  await sh(
    `umoci init --layout L
     umoci new --image L:base
     umoci unpack --image L:base B >/dev/null
     cd B/rootfs
     mkdir -p etc usr/bin var/lib/app opt/old home/u swapdir data/keep
     echo hi > etc/hostname; echo a > etc/a.conf; echo b > etc/b.conf
     printf bin > usr/bin/tool; chmod 4755 usr/bin/tool; ln usr/bin/tool usr/bin/tool2
     ln -s /usr/bin/tool usr/bin/alt; ln -s ../etc etc-link
     echo x > opt/old/f; echo s > swapdir/in; echo f > swapfile
     echo state > var/lib/app/state; echo k > data/keep/k; echo l > data/lower
     chown -R 1000:1001 home/u; mkfifo var/lib/app/fifo
     setfattr -n user.note -v hello etc/hostname
     setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= usr/bin/tool
     touch -d '2021-02-03 04:05:06' etc/hostname opt/old`,
    work,
  );
  await sh(
    `umoci repack --image L:base B; rm -rf B
     umoci unpack --image L:base B >/dev/null
     cd B/rootfs
     rm etc/b.conf; rm -r opt/old swapdir swapfile
     echo nowfile > swapdir; mkdir swapfile; echo inside > swapfile/x
     chmod 0750 var/lib/app; echo new > var/lib/app/new; touch -d '2020-01-01' var/lib/app
     cd ../..
     umoci repack --image L:v2 B; rm -rf B
     umoci config --image L:v2 --config.entrypoint /usr/bin/tool --config.cmd serve \\
       --config.env APP=1 --config.workingdir /home/u --config.user 1000:1001 \\
       --config.exposedports 8080/tcp --config.label org.test=yes --tag v2c`,
    work,
  );
  // The opaque layer: data/ hides data/keep and data/lower; the marker comes after data/new.
  const stage = join(work, 'opaque');
  await sh(
    `mkdir -p opaque/data; echo n > opaque/data/new; : > opaque/data/.wh..wh..opq
     chmod 0700 opaque/data; touch -d '2019-05-06 07:08:09' opaque/data/new opaque/data`,
    work,
  );
  const plain = await tarOf(stage, ['data', 'data/new', 'data/.wh..wh..opq']);
  const zstd = Buffer.from(
    (await execa('zstd', ['-q', '-c'], { input: plain, encoding: 'buffer' })).stdout,
  );
  appendLayer(
    layout,
    'v2c',
    'final',
    plain,
    'application/vnd.oci.image.layer.v1.tar',
    sha256(plain),
  );
  // The same layer as tar+zstd (umoci 0.4.7 cannot read those: its reference comes from `final`).
  appendLayer(
    layout,
    'v2c',
    'final-zstd',
    zstd,
    'application/vnd.oci.image.layer.v1.tar+zstd',
    sha256(plain),
  );
  const tag = 'final';
  await sh(
    `umoci raw unpack --image L:${tag} ref
     skopeo copy -q oci:L:${tag} docker-archive:docker.tar:app:1
     skopeo copy -q oci:L:${tag} oci-archive:oci.tar
     skopeo copy -q oci:L:final-zstd oci-archive:oci-zstd-layer.tar`,
    work,
  );
  return {
    layout,
    tag,
    reference: join(work, 'ref'),
    dockerArchive: join(work, 'docker.tar'),
    ociArchive: join(work, 'oci.tar'),
    ociZstdLayerArchive: join(work, 'oci-zstd-layer.tar'),
  };
}

/** Two images on one base layer (see buildSharedBaseImages). */
export interface SharedBaseImages {
  /** The OCI layout holding tags `base`, `a` and `b`. */
  layout: string;
  /** skopeo's archives of each image: docker-archive (layers uncompressed) and oci-archive (tar+gzip). */
  archives: Record<'a' | 'b', { dockerArchive: string; ociArchive: string }>;
  /** Bytes of each app layer's plain tar. */
  appLayerTarBytes: number;
}

/**
 * Two images that share their base layer, built with real umoci and skopeo:
 * `umoci raw add-layer` puts `baseTar` verbatim on an empty image (tag
 * `base`), then a different app layer on it for each of `a` and `b`
 * (`opt/app/app.bin`: `appBytes` of random, incompressible bytes, and
 * `opt/app/name`). Equal base diff_ids give equal chain IDs in both images
 * and in both archive forms. Needs root and the Debian packages umoci, skopeo.
 */
export async function buildSharedBaseImages(
  work: string,
  baseTar: string,
  appBytes = 5 * 1024 ** 2,
): Promise<SharedBaseImages> {
  await sh('umoci init --layout L; umoci new --image L:empty', work);
  await execa('umoci', ['raw', 'add-layer', '--image', 'L:empty', '--tag', 'base', baseTar], {
    cwd: work,
  });
  let appLayerTarBytes = 0;
  for (const name of ['a', 'b'] as const) {
    const stage = join(work, `app-${name}`);
    fs.mkdirSync(join(stage, 'opt/app'), { recursive: true });
    fs.writeFileSync(join(stage, 'opt/app/app.bin'), randomBytes(appBytes));
    fs.writeFileSync(join(stage, 'opt/app/name'), `${name}\n`);
    const layer = await tarOf(stage, ['opt', 'opt/app', 'opt/app/app.bin', 'opt/app/name']);
    fs.writeFileSync(join(work, `app-${name}.tar`), layer);
    appLayerTarBytes = layer.length;
    await sh(
      `umoci raw add-layer --image L:base --tag ${name} app-${name}.tar
       skopeo copy -q oci:L:${name} docker-archive:${name}-docker.tar:app:${name}
       skopeo copy -q oci:L:${name} oci-archive:${name}-oci.tar
       rm -rf app-${name} app-${name}.tar`,
      work,
    );
  }
  const archivesOf = (name: string): { dockerArchive: string; ociArchive: string } => ({
    dockerArchive: join(work, `${name}-docker.tar`),
    ociArchive: join(work, `${name}-oci.tar`),
  });
  return {
    layout: join(work, 'L'),
    archives: { a: archivesOf('a'), b: archivesOf('b') },
    appLayerTarBytes,
  };
}
