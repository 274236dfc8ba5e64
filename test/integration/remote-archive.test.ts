/**
 * Container archives read in place by ranged GETs (image/remote-archive.ts),
 * against the S3 emulator, with images built by umoci and skopeo
 * (oci-archive and docker-archive; 2, 3 and 10 layers; gzip, zstd and plain
 * layer blobs): every layer's bytes and digests equal what `tar` extracts
 * from the same archive; reading one layer fetches the headers, the JSON and
 * that layer only (counted by the reader and at a proxy on the link); an
 * overwrite, a tampered layer and a truncated archive fail with their codes;
 * anything but an uncompressed container archive is left to the caller (null).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import type { S3Client } from '@aws-sdk/client-s3';
import { isThinrelayError } from '../../host-agent/src/errors.js';
import { chainIdsOf, type OpenedImage } from '../../host-agent/src/image/layer-source.js';
import { openRemoteArchive } from '../../host-agent/src/image/remote-archive.js';
import { defaultLimits } from '../../host-agent/src/limits.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { headObject } from '../../host-agent/src/source/head.js';
import { startLinkProxy, type LinkProxy } from '../helpers/link-proxy.js';
import { appendLayer, buildOciFixture, tarOf, type OciFixture } from '../helpers/oci-fixtures.js';
import { needsRootAndTools } from '../helpers/root.js';
import { startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const bucket = 'thinrelay-remote';
const needsTools = needsRootAndTools(['umoci', 'skopeo', 'zstd']);

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A layer blob's plain tar, decompressed by its magic bytes with the usual tools. */
function plainTar(blob: Buffer): Buffer {
  if (blob[0] === 0x1f && blob[1] === 0x8b) return gunzipSync(blob);
  if (blob.readUInt32LE(0) === 0xfd2fb528)
    return execFileSync('zstd', ['-d', '-q', '-c'], { input: blob, maxBuffer: 1 << 28 });
  return blob;
}

interface Expected {
  /** Each layer's plain tar, base first. */
  layers: Buffer[];
  /** Where each layer's blob was extracted to, and the config. */
  layerFiles: string[];
  configFile: string;
  diffIds: string[];
}

/** What `tar -x` of the archive holds: each layer's plain tar (base first) and the config's diff_ids. */
function expectedOf(archive: string, dir: string): Expected {
  mkdirSync(dir);
  execFileSync('tar', ['-C', dir, '-xf', archive]);
  const readJson = (name: string): unknown => JSON.parse(readFileSync(join(dir, name), 'utf8'));
  let configName: string;
  let layerNames: string[];
  try {
    const index = readJson('index.json') as { manifests: { digest: string }[] };
    const blob = (digest: string): string => `blobs/sha256/${digest.slice(7)}`;
    const manifest = readJson(blob(index.manifests[0]!.digest)) as {
      config: { digest: string };
      layers: { digest: string }[];
    };
    configName = blob(manifest.config.digest);
    layerNames = manifest.layers.map((l) => blob(l.digest));
  } catch {
    const [entry] = readJson('manifest.json') as [{ Config: string; Layers: string[] }];
    configName = entry.Config;
    layerNames = entry.Layers;
  }
  const config = readJson(configName) as { rootfs: { diff_ids: string[] } };
  const layerFiles = layerNames.map((n) => join(dir, n));
  return {
    layers: layerFiles.map((f) => plainTar(readFileSync(f))),
    layerFiles,
    configFile: join(dir, configName),
    diffIds: config.rootfs.diff_ids,
  };
}

/** Writes `files` under `dir` and tars them in the order given (directories end in "/"). */
function tarInOrder(
  dir: string,
  files: [name: string, body: Buffer | string | null][],
  format: 'gnu' | 'pax' = 'gnu',
): string {
  for (const [name, body] of files) {
    if (body === null) mkdirSync(join(dir, name), { recursive: true });
    else writeFileSync(join(dir, name), body);
  }
  const out = `${dir}.tar`;
  const names = files.map(([n]) => n);
  execFileSync('tar', [`--format=${format}`, '--no-recursion', '-C', dir, '-cf', out, ...names]);
  return out;
}

/**
 * A `docker save` of Docker before 25: <id>/layer.tar files, <config>.json,
 * manifest.json last. `long`: layer directories named past ustar's 100
 * bytes, so the names are in GNU long-name or pax headers (`format`).
 */
function legacyDockerSave(image: Expected, dir: string, long?: { format: 'gnu' | 'pax' }): string {
  const config = readFileSync(image.configFile);
  const ids = image.layers.map(
    (_, i) => sha256(Buffer.from(`legacy layer ${i}`)) + (long ? '-'.repeat(120) : ''),
  );
  const files: [string, Buffer | string | null][] = [];
  for (const [i, id] of ids.entries()) {
    files.push([`${id}/`, null], [`${id}/VERSION`, '1.0'], [`${id}/json`, JSON.stringify({ id })]);
    files.push([`${id}/layer.tar`, image.layers[i]!]);
  }
  const configName = `${sha256(config)}.json`;
  files.push(
    [configName, config],
    [
      'manifest.json',
      JSON.stringify([
        {
          Config: configName,
          RepoTags: ['app:legacy'],
          Layers: ids.map((id) => `${id}/layer.tar`),
        },
      ]),
    ],
    ['repositories', JSON.stringify({ app: { legacy: ids.at(-1) } })],
  );
  return tarInOrder(dir, files, long?.format);
}

/** A `docker save` of Docker 25+: an OCI layout (plain layers) with manifest.json besides index.json. */
function docker25Save(image: Expected, dir: string): string {
  const config = readFileSync(image.configFile);
  const descriptor = (mediaType: string, body: Buffer) => ({
    mediaType,
    digest: `sha256:${sha256(body)}`,
    size: body.length,
  });
  const layers = image.layers.map((l) => descriptor('application/vnd.oci.image.layer.v1.tar', l));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: descriptor('application/vnd.oci.image.config.v1+json', config),
      layers,
    }),
  );
  const blob = (body: Buffer): [string, Buffer] => [`blobs/sha256/${sha256(body)}`, body];
  return tarInOrder(dir, [
    ['blobs/', null],
    ['blobs/sha256/', null],
    ...image.layers.map(blob),
    blob(config),
    blob(manifest),
    [
      'index.json',
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          {
            ...descriptor('application/vnd.oci.image.manifest.v1+json', manifest),
            annotations: { 'org.opencontainers.image.ref.name': '25' },
          },
        ],
      }),
    ],
    [
      'manifest.json',
      JSON.stringify([
        {
          Config: `blobs/sha256/${sha256(config)}`,
          RepoTags: ['app:25'],
          Layers: layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`),
        },
      ]),
    ],
    ['oci-layout', '{"imageLayoutVersion":"1.0.0"}'],
    ['repositories', '{"app":{"25":""}}'],
  ]);
}

async function readLayer(image: OpenedImage, position: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of image.layers[position - 1]!.open(new AbortController().signal))
    chunks.push(c);
  return Buffer.concat(chunks);
}

function hasCode(code: string): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isThinrelayError(err), `not a typed error: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

describe('remote container archives (ranged GETs)', { skip: needsTools }, () => {
  let s3: S3Emulator;
  let proxy: LinkProxy;
  let viaProxy: S3Client;
  let work: string;
  let fx: OciFixture;
  const archives = new Map<string, string>(); // key → local file

  const open = async (
    key: string,
    client: S3Client = s3.client,
    limits = defaultLimits,
    maxWalkRequests?: number,
  ): Promise<OpenedImage | null> => {
    const ref = await headObject(client, bucket, key, { maxBlobBytes: defaultLimits.maxBlobBytes });
    return openRemoteArchive(client, ref, {
      limits,
      partSize: 256 * 1024,
      concurrency: 4,
      signal: new AbortController().signal,
      logger: silentLogger,
      ...(maxWalkRequests !== undefined ? { maxWalkRequests } : {}),
    });
  };
  const put = async (key: string, file: string): Promise<void> => {
    archives.set(key, file);
    await s3.putObject(bucket, key, readFileSync(file));
  };
  /** skopeo's docker-archive or oci-archive (gzip layers, or as they are with `plain`) of an image. */
  const skopeo = (layout: string, tag: string, to: string, plain = false): string => {
    const out = join(work, to);
    execFileSync('skopeo', [
      'copy',
      '-q',
      ...(plain ? ['--dest-oci-accept-uncompressed-layers'] : []),
      `oci:${layout}:${tag}`,
      to.startsWith('docker') ? `docker-archive:${out}:app:1` : `oci-archive:${out}`,
    ]);
    return out;
  };

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    proxy = await startLinkProxy({ targetPort: s3.port });
    viaProxy = s3.makeClient({ endpoint: proxy.endpoint });
    work = mkdtempSync(join(tmpdir(), 'thinrelay-remote-'));
    fx = await buildOciFixture(work);
    // Ten layers: the fixture's three and seven of 300 KiB each (bigger than a header window).
    const ten = join(work, 'L10');
    cpSync(fx.layout, ten, { recursive: true });
    let below = 'final';
    for (let i = 4; i <= 10; i++) {
      const stage = join(work, `stage${i}`);
      mkdirSync(join(stage, 'big'), { recursive: true });
      writeFileSync(join(stage, 'big', `layer${i}.bin`), randomBytes(300 * 1024));
      const layer = await tarOf(stage, ['big', `big/layer${i}.bin`]);
      appendLayer(
        ten,
        below,
        `l${i}`,
        layer,
        'application/vnd.oci.image.layer.v1.tar',
        sha256(layer),
      );
      below = `l${i}`;
    }
    await put('images/oci.tar', fx.ociArchive);
    await put('images/docker.tar', fx.dockerArchive);
    await put('images/oci-zstd-layer.tar', fx.ociZstdLayerArchive);
    await put('images/two-oci.tar', skopeo(fx.layout, 'v2c', 'two-oci.tar'));
    await put('images/two-docker.tar', skopeo(fx.layout, 'v2c', 'docker-two.tar'));
    await put('images/ten-oci.tar', skopeo(ten, 'l10', 'ten-oci.tar', true));
    await put('images/plain-oci.tar', skopeo(fx.layout, 'final', 'plain-oci.tar', true));
    const plain = expectedOf(archives.get('images/plain-oci.tar')!, join(work, 'src-plain'));
    await put('images/legacy-docker.tar', legacyDockerSave(plain, join(work, 'legacy')));
    for (const format of ['gnu', 'pax'] as const)
      await put(
        `images/legacy-${format}-long.tar`,
        legacyDockerSave(plain, join(work, `legacy-${format}`), { format }),
      );
    await put('images/docker25.tar', docker25Save(plain, join(work, 'docker25')));
    await put('images/ten-docker.tar', skopeo(ten, 'l10', 'docker-ten.tar'));
  });
  after(async () => {
    await proxy?.close();
    await s3?.stop();
    if (work !== undefined) execFileSync('rm', ['-rf', work]);
  });

  const cases: [key: string, format: string, layers: number][] = [
    ['images/oci.tar', 'oci-archive', 3],
    ['images/docker.tar', 'docker-archive', 3],
    ['images/oci-zstd-layer.tar', 'oci-archive', 3],
    ['images/plain-oci.tar', 'oci-archive', 3],
    ['images/legacy-docker.tar', 'docker-archive', 3],
    ['images/legacy-gnu-long.tar', 'docker-archive', 3],
    ['images/legacy-pax-long.tar', 'docker-archive', 3],
    ['images/docker25.tar', 'oci-archive', 3],
    ['images/two-oci.tar', 'oci-archive', 2],
    ['images/two-docker.tar', 'docker-archive', 2],
    ['images/ten-oci.tar', 'oci-archive', 10],
    ['images/ten-docker.tar', 'docker-archive', 10],
  ];
  for (const [key, format, count] of cases) {
    test(`${key}: every layer read by range equals tar's, digests and chain IDs check out`, async () => {
      const expected = expectedOf(archives.get(key)!, join(work, `x-${key.replace(/\W/g, '_')}`));
      const image = await open(key);
      assert.ok(image !== null, 'an uncompressed container archive is read by range');
      assert.equal(image.format, format);
      assert.equal(image.compression, 'none');
      assert.equal(image.layers.length, count);
      assert.equal(expected.layers.length, count);
      assert.deepEqual(
        image.layers.map((l) => l.diffId),
        expected.diffIds,
      );
      assert.deepEqual(
        image.layers.map((l) => l.chainId),
        chainIdsOf(expected.diffIds),
      );
      // Every fixture image is built on v2c, whose config umoci set.
      assert.deepEqual(image.config?.entrypoint, ['/usr/bin/tool']);
      assert.deepEqual(image.config?.env.includes('APP=1'), true);
      for (const layer of image.layers) {
        assert.equal(layer.digests(), null, 'nothing is known of a layer before it is read');
        const bytes = await readLayer(image, layer.position);
        assert.ok(bytes.equals(expected.layers[layer.position - 1]!), `layer ${layer.position}`);
        assert.deepEqual(layer.digests(), {
          diffId: expected.diffIds[layer.position - 1],
          chainId: layer.chainId,
          tarBytes: bytes.length,
        });
      }
      assert.equal(image.spooledBytes(), 0);
      image.release();
    });
  }

  test('the same image as oci-archive and docker-archive has the same chain IDs', async () => {
    const oci = await open('images/ten-oci.tar');
    const docker = await open('images/ten-docker.tar');
    assert.deepEqual(
      oci!.layers.map((l) => l.chainId),
      docker!.layers.map((l) => l.chainId),
    );
    assert.deepEqual(oci!.config, docker!.config);
  });

  for (const [key, layers, topFetched] of [
    // Two-layer archives lie whole in the first header window: the top layer comes with it.
    ['images/two-oci.tar', 2, false],
    ['images/two-docker.tar', 2, false],
    ['images/ten-oci.tar', 10, true],
    ['images/ten-docker.tar', 10, true],
  ] as const) {
    test(`${key}: opening and reading the top layer fetches headers, JSON and that layer only`, async (t) => {
      const size = readFileSync(archives.get(key)!).length;
      const head = await headObject(viaProxy, bucket, key, { maxBlobBytes: 1 << 30 });
      assert.equal(head.size, size);
      const req0 = proxy.requests.length;
      const bytes0 = proxy.responseBytes;
      const image = await open(key, viaProxy);
      assert.ok(image !== null);
      // open() did a HEAD of its own above; count from after it.
      const walkRequests = proxy.requests.length - req0 - 1;
      const walkBytes = image.bytesFetched();
      const overhead = proxy.responseBytes - bytes0;
      t.diagnostic(
        `${key}: ${layers} layers, ${size} bytes; header walk and JSON: ${walkRequests} GETs, ${walkBytes} bytes`,
      );
      assert.ok(
        walkRequests <= layers + 4,
        `${walkRequests} GETs for the structure of ${layers} layers`,
      );
      assert.ok(
        walkBytes <= walkRequests * 64 * 1024,
        `${walkBytes} bytes in ${walkRequests} GETs`,
      );
      assert.ok(overhead >= walkBytes, 'the proxy saw at least the bytes the reader counted');
      const top = image.layers.at(-1)!;
      const others = image.layers.slice(0, -1).reduce((n, l) => n + l.blobBytes, 0);
      const body = await readLayer(image, layers);
      assert.ok(body.length > 0);
      assert.equal(
        image.bytesFetched(),
        walkBytes + (topFetched ? top.blobBytes : 0),
        topFetched ? 'only the top layer was fetched' : 'nothing more was fetched',
      );
      if (!topFetched) assert.equal(proxy.requests.length - req0, walkRequests + 1, 'no more GETs');
      const seen = proxy.responseBytes - bytes0;
      const requests = proxy.requests.length - req0;
      const gets = proxy.requests.slice(req0).filter((r) => r.method === 'GET');
      assert.equal(gets.length, requests - 1, 'a HEAD, then GETs');
      for (const r of gets) {
        assert.equal(r.headers['if-match'], head.eTag, 'every GET is pinned to the ETag');
        // A GET of the whole object is unranged: only when it fits in one header window.
        if (size > 64 * 1024) assert.match(r.headers.range ?? '', /^bytes=\d+-\d*$/, 'ranged');
      }
      // The link carried the counted bytes plus HTTP heads (well under 1 KiB each), nothing more.
      assert.ok(seen >= image.bytesFetched(), `${seen} on the link`);
      assert.ok(
        seen <= image.bytesFetched() + requests * 1024,
        `${seen} on the link for ${image.bytesFetched()} counted in ${requests} requests`,
      );
      assert.ok(
        image.bytesFetched() < size - others + layers * 64 * 1024,
        'the lower layers were not downloaded',
      );
      if (layers === 10) assert.ok(image.bytesFetched() < size / 2, 'less than half the archive');
    });
  }

  test('a layer can be read again after a read (a retry reads it afresh)', async () => {
    const image = await open('images/oci.tar');
    const first = await readLayer(image!, 1);
    const again = await readLayer(image!, 1);
    assert.ok(first.equals(again));
    assert.notEqual(image!.layers[0]!.digests(), null);
  });

  test('an overwrite between open and a layer fetch fails with OBJECT_CHANGED', async () => {
    await put('images/overwritten.tar', archives.get('images/ten-oci.tar')!);
    const image = await open('images/overwritten.tar');
    assert.ok(image !== null);
    await s3.putObject(bucket, 'images/overwritten.tar', readFileSync(fx.dockerArchive));
    await assert.rejects(readLayer(image, 10), hasCode('OBJECT_CHANGED'));
    assert.equal(image.layers[9]!.digests(), null);
    // A small layer that came with the header walk is the pinned version's: it still reads.
    assert.ok((await readLayer(image, 3)).length > 0);
  });

  for (const [name, key, marker, layers] of [
    // Small top layers (served from the header walk's window) and big ones (fetched by range).
    ['oci-archive', 'images/plain-oci.tar', 'data/new', 3],
    ['docker-archive', 'images/docker.tar', 'data/new', 3],
    ['oci-archive, 10 layers', 'images/ten-oci.tar', 'big/layer10.bin', 10],
    ['docker-archive, 10 layers', 'images/ten-docker.tar', 'big/layer10.bin', 10],
  ] as const) {
    test(`${name}: a layer with a changed byte but the old digests fails with LAYER_DIGEST_MISMATCH`, async () => {
      // Re-pack the archive, member order kept, with one content byte of its
      // plain top layer changed (the first byte of `marker`'s data).
      const file = archives.get(key)!;
      const dir = join(work, `tamper-${name.replace(/\W/g, '_')}`);
      const expected = expectedOf(file, dir);
      const top = readFileSync(expected.layerFiles.at(-1)!);
      const at = top.indexOf(`${marker}\0`);
      assert.ok(at >= 0 && at % 512 === 0, `${marker} is a member of the top layer`);
      top[at + 512] = top[at + 512]! ^ 0x01;
      writeFileSync(expected.layerFiles.at(-1)!, top);
      const names = execFileSync('tar', ['-tf', file]).toString().trim().split('\n');
      const out = `${dir}-repacked.tar`;
      execFileSync('tar', ['--no-recursion', '-C', dir, '-cf', out, ...names]);
      const tampered = `images/tampered-${name.replace(/\W/g, '_')}.tar`;
      await put(tampered, out);
      const image = await open(tampered);
      assert.ok(image !== null, 'the structure and config are intact');
      assert.ok((await readLayer(image, 1)).equals(expected.layers[0]!), 'layer 1 is untouched');
      await assert.rejects(readLayer(image, layers), hasCode('LAYER_DIGEST_MISMATCH'));
      assert.equal(image.layers[layers - 1]!.digests(), null);
    });
  }

  test('a gzip layer blob with a changed byte fails with BLOB_DIGEST_MISMATCH', async () => {
    const image = await open('images/oci.tar');
    const top = image!.layers[1]!;
    const bytes = readFileSync(fx.ociArchive);
    const expected = expectedOf(fx.ociArchive, join(work, 'tamper-gzip'));
    // Layer 2's blob (gzip) lies in the archive as it was extracted: change a byte in its middle.
    const at = bytes.indexOf(readFileSync(expected.layerFiles[1]!));
    assert.ok(at > 0, 'layer 2 is in the archive');
    bytes[at + Math.floor(top.blobBytes / 2)]! ^= 0x55;
    await s3.putObject(bucket, 'images/tampered-gzip.tar', bytes);
    const tampered = await open('images/tampered-gzip.tar');
    assert.ok(tampered !== null);
    await assert.rejects(readLayer(tampered, 2), hasCode('BLOB_DIGEST_MISMATCH'));
  });

  test('a range cut mid-way is resumed alone, and the layer still checks out', async () => {
    let armed = false;
    const cutting = await startLinkProxy({
      targetPort: s3.port,
      cutResponse: (req) => {
        if (!armed || req.method !== 'GET') return undefined;
        armed = false;
        return 100 * 1024;
      },
    });
    try {
      const client = s3.makeClient({ endpoint: cutting.endpoint });
      const image = await open('images/ten-oci.tar', client);
      const expected = expectedOf(archives.get('images/ten-oci.tar')!, join(work, 'x-cut'));
      armed = true;
      const body = await readLayer(image!, 10);
      assert.equal(cutting.cuts.length, 1, 'one response was cut');
      assert.ok(body.equals(expected.layers[9]!));
      assert.notEqual(image!.layers[9]!.digests(), null);
      const cut = cutting.cuts[0]!;
      const after = cutting.requests.slice(cutting.requests.indexOf(cut) + 1);
      const [, from, to] = /bytes=(\d+)-(\d+)?/.exec(cut.headers.range ?? '') ?? [];
      assert.ok(
        after.some((r) => {
          const m = /bytes=(\d+)-(\d+)?/.exec(r.headers.range ?? '');
          return m !== null && Number(m[1]) > Number(from) && m[2] === to;
        }),
        'the cut range was asked again from where it broke, to its own end',
      );
    } finally {
      await cutting.close();
    }
  });

  test('an archive whose header walk would need too many GETs is left to the caller: null', async () => {
    assert.notEqual(await open('images/ten-oci.tar', s3.client, defaultLimits, 8), null);
    assert.equal(await open('images/ten-oci.tar', s3.client, defaultLimits, 7), null);
  });

  test('an aborted layer read stops with the signal reason, and the layer can be read again', async () => {
    const image = await open('images/ten-oci.tar');
    const controller = new AbortController();
    const reason = new Error('stop: the job was cancelled');
    let chunks = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of image!.layers[9]!.open(controller.signal)) {
          chunks += chunk.length > 0 ? 1 : 0;
          controller.abort(reason);
        }
      })(),
      (err) => err === reason,
    );
    assert.ok(chunks >= 1);
    assert.equal(image!.layers[9]!.digests(), null);
    assert.ok((await readLayer(image!, 10)).length > 0);
    assert.notEqual(image!.layers[9]!.digests(), null);
  });

  test('a container archive over the entry limit fails with LIMIT_ENTRY_COUNT', async () => {
    await assert.rejects(
      open('images/oci.tar', s3.client, { ...defaultLimits, maxEntries: 5 }),
      hasCode('LIMIT_ENTRY_COUNT'),
    );
  });

  test('a damaged member header fails with ARCHIVE_MALFORMED', async () => {
    const bytes = readFileSync(fx.ociArchive);
    const at = bytes.indexOf('index.json\0');
    assert.ok(at > 0 && at % 512 === 0);
    bytes[at + 100] = bytes[at + 100]! ^ 0x01; // the mode field: the header checksum no longer matches
    await s3.putObject(bucket, 'images/damaged.tar', bytes);
    await assert.rejects(open('images/damaged.tar'), hasCode('ARCHIVE_MALFORMED'));
  });

  test('a truncated container archive fails with ARCHIVE_TRUNCATED', async () => {
    const whole = readFileSync(fx.ociArchive);
    await s3.putObject(bucket, 'images/cut.tar', whole.subarray(0, Math.floor(whole.length / 2)));
    await assert.rejects(open('images/cut.tar'), hasCode('ARCHIVE_TRUNCATED'));
  });

  test('an archive compressed as a whole, a flat tar or no tar at all: null, after one GET', async () => {
    const oci = readFileSync(fx.ociArchive);
    const flat = execFileSync('tar', ['-C', fx.reference, '--numeric-owner', '-cf', '-', '.'], {
      maxBuffer: 1 << 28,
    });
    const objects: [string, Buffer][] = [
      ['images/oci.tar.gz', gzipSync(oci)],
      [
        'images/oci.tar.zst',
        execFileSync('zstd', ['-q', '-c'], { input: oci, maxBuffer: 1 << 28 }),
      ],
      ['images/rootfs.tar', flat],
      ['images/rootfs.tar.gz', gzipSync(flat)],
      ['images/noise.bin', randomBytes(200 * 1024)],
      ['images/tiny.bin', Buffer.from('hello')],
    ];
    for (const [key, body] of objects) {
      await s3.putObject(bucket, key, body);
      const req0 = proxy.requests.length;
      assert.equal(await open(key, viaProxy), null, key);
      assert.equal(proxy.requests.length - req0, 2, `${key}: a HEAD and one GET`);
    }
  });
});
