/**
 * The trust gate through `thinrelay process-image`, as an operator runs it:
 * the built CLI, a real S3 emulator, real loop devices and mounts, keys and
 * signatures made with openssl (test/helpers/signing-keys.ts). A policy file
 * (THINRELAY_SIGNATURE_POLICY) is what a host outside a group verifies with.
 * A flat tar that fails its check keeps its unpacked volume: a re-sign seals
 * it without a GET of the object (counted at a proxy in front of the S3
 * emulator); gc and an eviction pass release such a held volume.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { okJson as json, runCli, type CliResult } from '../helpers/cli.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { startLinkProxy, type LinkProxy } from '../helpers/link-proxy.js';
import { ociArchiveOfLayers } from '../helpers/oci-archive.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { KeyDir, type TestKey } from '../helpers/signing-keys.js';
import { packTar, smallRootfsTar } from '../helpers/tar-fixtures.js';

const bucket = 'thinrelay-images';

interface ShowJson {
  image: {
    status: string;
    errorCode: string | null;
    signatureDeadline: string | null;
    signer: { type: string; fingerprint?: string } | null;
    verifiedAt: string | null;
    trust: {
      mode: string;
      verdict: string;
      payload: string;
      failure: { code: string } | null;
    } | null;
  };
  steps: { name: string; detail: Record<string, unknown> | null }[];
}

function manifestDigestOf(archive: Buffer): string {
  const index = JSON.parse(
    execFileSync('tar', ['-xOf', '-', 'index.json'], { input: archive }).toString('utf8'),
  ) as { manifests: { digest: string }[] };
  return index.manifests[0]!.digest;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** GETs of the object itself (not its sidecar) the proxy has seen. */
const objectGets = (proxy: LinkProxy, key: string): number =>
  proxy.requests.filter((r) => r.method === 'GET' && r.path.split('?')[0] === `/${bucket}/${key}`)
    .length;

/** The image's volumes (kind, state) and their layers' status, as the store holds them. */
function volumesOf(dir: string, key: string): { id: number; state: string; blob: string }[] {
  const store = StateStore.open(dir, { readonly: true });
  try {
    const image = store.images.latestByKey(key)!;
    return store.db
      .prepare(
        `SELECT v.id, v.state, b.status AS blob FROM storage_objects v
           JOIN blobs b ON b.volume_id = v.id
           JOIN jobs j ON j.id = v.job_id
          WHERE v.kind = 'volume' AND j.image_id = ? ORDER BY v.id`,
      )
      .all(image.id) as { id: number; state: string; blob: string }[];
  } finally {
    store.close();
  }
}

describe('trust gate (process-image)', { skip: needsRoot }, () => {
  let s3: S3Emulator;
  let stateDir: string;
  let keys: KeyDir;
  let trusted: TestKey;
  let trustedEd: TestKey;
  let other: TestKey;
  const env = (policy: object): NodeJS.ProcessEnv => {
    const file = keys.path(
      `policy-${sha256(Buffer.from(JSON.stringify(policy))).slice(0, 12)}.json`,
    );
    writeFileSync(file, JSON.stringify({ signatures: policy }));
    return {
      ...s3EnvFor(s3),
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_SIGNATURE_POLICY: file,
    };
  };
  const requirePolicy = (awaitSeconds = 3600): object => ({
    mode: 'require',
    publicKeys: [trusted.publicKeyPem, trustedEd.publicKeyPem],
    awaitSeconds,
  });
  const processKey = (key: string, policy: object): Promise<CliResult> =>
    runCli(['process-image', '--s3-key', key, '--json'], env(policy));
  const show = async (key: string): Promise<ShowJson> =>
    json<ShowJson>(await runCli(['show', key, '--json'], env({ mode: 'off' })));

  before(async () => {
    s3 = await startS3Emulator();
    await s3.createBucket(bucket);
    stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-trust-state-'));
    keys = new KeyDir();
    trusted = keys.ecdsa();
    trustedEd = keys.ed25519();
    other = keys.ecdsa();
  });
  after(async () => {
    releaseStateDir(stateDir);
    keys.remove();
    await s3.stop();
  });

  test('a flat tar signed by a trusted ECDSA key becomes ready; show names the signer', async () => {
    const tar = await smallRootfsTar('signed');
    await s3.putObject(bucket, 'img/signed.tar', tar);
    await s3.putObject(bucket, 'img/signed.tar.sig', keys.sign(trusted, tar));
    const r = json<{ outcome: string; devicePath: string }>(
      await processKey('img/signed.tar', requirePolicy()),
    );
    assert.equal(r.outcome, 'complete');
    const s = await show('img/signed.tar');
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.signer?.fingerprint, trusted.fingerprint);
    assert.equal(s.image.trust?.payload, `object sha256:${sha256(tar)}`);
    assert.ok(s.image.verifiedAt !== null);
    const human = await runCli(['show', 'img/signed.tar'], env({ mode: 'off' }));
    assert.match(
      human.stdout,
      new RegExp(`signature verified \\(require\\) by key ${trusted.fingerprint}`),
    );
  });

  test('a pure Ed25519 signature over a flat tar (read again to verify) becomes ready', async () => {
    const tar = await smallRootfsTar('ed25519');
    const gz = execFileSync('gzip', ['-c'], { input: tar });
    await s3.putObject(bucket, 'img/ed.tar.gz', gz);
    await s3.putObject(bucket, 'img/ed.tar.gz.sig', keys.sign(trustedEd, gz));
    json(await processKey('img/ed.tar.gz', requirePolicy()));
    const s = await show('img/ed.tar.gz');
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.signer?.fingerprint, trustedEd.fingerprint);
  });

  test('signed by a key the policy does not trust: SIGNATURE_INVALID, nothing sealed', async () => {
    const tar = await smallRootfsTar('other-key');
    await s3.putObject(bucket, 'img/other.tar', tar);
    await s3.putObject(bucket, 'img/other.tar.sig', keys.sign(other, tar));
    const r = await processKey('img/other.tar', requirePolicy());
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SIGNATURE_INVALID/);
    assert.match(r.stderr, new RegExp(trusted.fingerprint));
    const s = await show('img/other.tar');
    assert.equal(s.image.status, 'failed');
    assert.equal(s.image.errorCode, 'SIGNATURE_INVALID');
    assert.equal(s.image.trust?.failure?.code, 'SIGNATURE_INVALID');
    // The volume it was unpacked on (before the signature was known) is never sealed nor
    // shared: held unpacked and detached for a re-sign.
    assert.deepEqual(
      volumesOf(stateDir, 'img/other.tar').map((v) => [v.state, v.blob]),
      [['unpacked', 'unpacking']],
    );
    assert.deepEqual(hostInventory(stateDir).mounts, []);
  });

  test('a tampered archive with the original’s valid signature is refused', async () => {
    const original = await smallRootfsTar('original');
    const tampered = await smallRootfsTar('tampered');
    await s3.putObject(bucket, 'img/tampered.tar', tampered);
    await s3.putObject(bucket, 'img/tampered.tar.sig', keys.sign(trusted, original));
    const r = await processKey('img/tampered.tar', requirePolicy());
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SIGNATURE_INVALID/);
    assert.equal((await show('img/tampered.tar')).image.status, 'failed');
  });

  test('unsigned: awaiting-signature without a job; the sidecar arrives → ready', async () => {
    const tar = await smallRootfsTar('late');
    await s3.putObject(bucket, 'img/late.tar', tar);
    const r = await processKey('img/late.tar', requirePolicy());
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stderr, /AWAITING_SIGNATURE/);
    const waiting = await show('img/late.tar');
    assert.equal(waiting.image.status, 'awaiting-signature');
    assert.ok(waiting.image.signatureDeadline !== null);
    assert.equal(waiting.steps.length, 0, 'no job while it waits');
    await s3.putObject(bucket, 'img/late.tar.sig', keys.sign(trusted, tar));
    json(await processKey('img/late.tar', requirePolicy()));
    const s = await show('img/late.tar');
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.signatureDeadline, null);
  });

  test('never signed: SIGNATURE_MISSING once the deadline passed', async () => {
    await s3.putObject(bucket, 'img/never.tar', await smallRootfsTar('never'));
    const first = await processKey('img/never.tar', requirePolicy(1));
    assert.equal(first.code, 75, first.stderr);
    await sleep(1500);
    const r = await processKey('img/never.tar', requirePolicy(1));
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SIGNATURE_MISSING/);
    const s = await show('img/never.tar');
    assert.equal(s.image.status, 'failed');
    assert.equal(s.image.errorCode, 'SIGNATURE_MISSING');
  });

  test('warn: an unsigned image activates, the failed check recorded', async () => {
    await s3.putObject(bucket, 'img/warn.tar', await smallRootfsTar('warn'));
    json(await processKey('img/warn.tar', { ...requirePolicy(), mode: 'warn' }));
    const s = await show('img/warn.tar');
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.trust?.mode, 'warn');
    assert.equal(s.image.trust?.verdict, 'failed');
    assert.equal(s.image.trust?.failure?.code, 'SIGNATURE_MISSING');
    assert.equal(s.image.verifiedAt, null);
  });

  test('one sidecar lookup per image: the job’s gate checks the sidecar its hold read', async (t) => {
    const proxy = await startLinkProxy({ targetPort: s3.port });
    t.after(() => proxy.close());
    const gets = (path: string): number =>
      proxy.requests.filter((r) => r.method === 'GET' && r.path.split('?')[0] === path).length;
    const key = 'img/one-lookup.tar';
    const tar = await smallRootfsTar('one-lookup');
    await s3.putObject(bucket, key, tar);
    await s3.putObject(bucket, `${key}.sig`, keys.sign(trusted, tar));
    const r = await runCli(['process-image', '--s3-key', key, '--json'], {
      ...env(requirePolicy()),
      ...s3EnvFor(proxy),
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await show(key)).image.signer?.fingerprint, trusted.fingerprint);
    // Both sidecar keys asked for once (the bundle is not there), not again at the gate.
    assert.equal(gets(`/${bucket}/${key}.sigstore.json`), 1);
    assert.equal(gets(`/${bucket}/${key}.sig`), 1);
  });

  test('OCI archives signed by manifest digest: ready, the held base layer not fetched again', async () => {
    // A base large enough to be fetched by its own ranged GETs (small members come with the headers).
    const base = await packTar([
      { name: 'opt/', type: 'directory' },
      { name: 'opt/base.bin', content: randomBytes(4 * 1024 ** 2) },
    ]);
    const appA = await smallRootfsTar('oci-a');
    const appB = await smallRootfsTar('oci-b');
    const a = await ociArchiveOfLayers([base, appA]);
    const b = await ociArchiveOfLayers([base, appB]);
    for (const [key, archive] of [
      ['img/a.oci.tar', a],
      ['img/b.oci.tar', b],
    ] as const) {
      await s3.putObject(bucket, key, archive);
      // The payload: the 71-byte digest string, signed as a blob (docs/trust.md).
      await s3.putObject(bucket, `${key}.sig`, keys.sign(trusted, manifestDigestOf(archive)));
    }
    json(await processKey('img/a.oci.tar', requirePolicy()));
    json(await processKey('img/b.oci.tar', requirePolicy()));
    const s = await show('img/b.oci.tar');
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.trust?.payload, `manifest ${manifestDigestOf(b)}`);
    const unpack = s.steps.find((x) => x.name === 'unpack')!.detail!;
    assert.equal(unpack.layersApplied, 1);
    assert.equal(unpack.reader, 'ranged');
    assert.ok(
      (unpack.bytesFetched as number) < base.length,
      `fetched ${String(unpack.bytesFetched)} of ${b.length} (base ${base.length})`,
    );
  });

  test('an OCI archive signed over its bytes instead of its manifest digest is refused', async () => {
    const archive = await ociArchiveOfLayers([await smallRootfsTar('oci-wrong-payload')]);
    await s3.putObject(bucket, 'img/wrong.oci.tar', archive);
    await s3.putObject(bucket, 'img/wrong.oci.tar.sig', keys.sign(trusted, archive));
    const r = await processKey('img/wrong.oci.tar', requirePolicy());
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SIGNATURE_INVALID/);
    const s = await show('img/wrong.oci.tar');
    assert.equal(s.image.status, 'failed');
    const unpack = s.steps.find((x) => x.name === 'unpack');
    assert.equal(unpack?.detail ?? null, null, 'no layer was applied');
  });

  test('a key removed + verify --all: untrusted, no new snapshot, the active one left; back with the key', async () => {
    const signed = json<{ devicePath: string }>(
      await processKey('img/signed.tar', requirePolicy()),
    );
    const narrowed = { mode: 'require', publicKeys: [trustedEd.publicKeyPem] };
    const r = await runCli(['verify', '--all', '--json'], env(narrowed));
    assert.equal(r.code, 1, r.stderr);
    const out = JSON.parse(r.stdout) as {
      images: {
        key: string;
        status: string;
        verdict: string;
        code: string | null;
        activeSnapshots: { devicePath: string }[];
      }[];
    };
    assert.ok(Array.isArray(out.images), r.stdout + r.stderr);
    const byKey = new Map(out.images.map((i) => [i.key, i]));
    const s = byKey.get('img/signed.tar')!;
    assert.equal(s.status, 'untrusted');
    assert.equal(s.code, 'SIGNATURE_INVALID');
    assert.deepEqual(
      s.activeSnapshots.map((x) => x.devicePath),
      [signed.devicePath],
    );
    assert.equal(byKey.get('img/ed.tar.gz')!.status, 'ready', 'still signed by a trusted key');
    assert.equal(byKey.get('img/warn.tar')!.code, 'SIGNATURE_MISSING');
    // The snapshot in use is untouched: still attached, still readable.
    assert.ok(statSync(signed.devicePath).isBlockDevice());
    execFileSync('blkid', [signed.devicePath]);
    const activate = await runCli(['activate', 'img/signed.tar'], env(narrowed));
    assert.equal(activate.code, 2, activate.stderr);
    assert.match(activate.stderr, /UNTRUSTED/);
    const again = await processKey('img/signed.tar', narrowed);
    assert.match(again.stderr, /UNTRUSTED/);
    // The key back in the policy: ready again.
    const back = await runCli(['verify', 'img/signed.tar', '--json'], env(requirePolicy()));
    assert.equal(back.code, 0, back.stderr);
    assert.equal((await show('img/signed.tar')).image.status, 'ready');
  });
  test('re-signed after SIGNATURE_INVALID: ready from the held volume, no GET of the object', async (t) => {
    const proxy = await startLinkProxy({ targetPort: s3.port });
    t.after(() => proxy.close());
    const viaProxy = (policy: object): NodeJS.ProcessEnv => ({
      ...env(policy),
      ...s3EnvFor(proxy),
    });
    const key = 'img/resigned.tar';
    const tar = await smallRootfsTar('resigned');
    await s3.putObject(bucket, key, tar);
    await s3.putObject(bucket, `${key}.sig`, keys.sign(other, tar));
    const r = await runCli(['process-image', '--s3-key', key, '--json'], viaProxy(requirePolicy()));
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /SIGNATURE_INVALID/);
    assert.equal(objectGets(proxy, key) > 0, true, 'the first attempt downloaded it');
    const [held] = volumesOf(stateDir, key);
    assert.deepEqual([held?.state, held?.blob], ['unpacked', 'unpacking']);
    // Counted in pool use: a failed image holding content.
    const pool = json<{ holders: { failedBytes: number } }>(
      await runCli(['pool', 'status', '--json'], env({ mode: 'off' })),
    );
    assert.ok(pool.holders.failedBytes >= tar.length, JSON.stringify(pool.holders));

    await s3.putObject(bucket, `${key}.sig`, keys.sign(trusted, tar));
    const gets0 = objectGets(proxy, key);
    json(await runCli(['process-image', '--s3-key', key, '--json'], viaProxy(requirePolicy())));
    assert.equal(objectGets(proxy, key) - gets0, 0, 'no byte of the object fetched again');
    const s = await show(key);
    assert.equal(s.image.status, 'ready');
    assert.equal(s.image.signer?.fingerprint, trusted.fingerprint);
    assert.equal(s.image.trust?.payload, `object sha256:${sha256(tar)}`);
    const unpack = s.steps.find((x) => x.name === 'unpack')!.detail!;
    assert.equal(unpack.resumed, true);
    assert.deepEqual(
      volumesOf(stateDir, key).map((v) => [v.id, v.state, v.blob]),
      [[held!.id, 'sealed', 'ready']],
    );
    assert.deepEqual(hostInventory(stateDir).mounts, []);
  });

  test('killed between the flush and the signature check: the next attempt holds the volume; a re-sign needs no GET', async (t) => {
    const proxy = await startLinkProxy({ targetPort: s3.port });
    t.after(() => proxy.close());
    const viaProxy = (policy: object, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
      ...env(policy),
      ...s3EnvFor(proxy),
      ...extra,
    });
    // ECDSA keys only: a pure Ed25519 key tried on a refused signature reads the object to verify.
    const ecdsaOnly = { mode: 'require', publicKeys: [trusted.publicKeyPem], awaitSeconds: 3600 };
    const key = 'img/crash-held.tar';
    const tar = await smallRootfsTar('crash held');
    await s3.putObject(bucket, key, tar);
    await s3.putObject(bucket, `${key}.sig`, keys.sign(other, tar));
    const crashed = await runCli(
      ['process-image', '--s3-key', key],
      viaProxy(ecdsaOnly, { THINRELAY_CRASH_AT: 'layer:1:flushed' }),
    );
    assert.equal(crashed.signal, 'SIGKILL', crashed.stderr);
    const gets0 = objectGets(proxy, key);
    assert.ok(gets0 > 0);
    // The next attempt resumes the flushed volume: checked, refused, held (detached).
    const again = await runCli(['process-image', '--s3-key', key], viaProxy(ecdsaOnly));
    assert.equal(again.code, 1, again.stderr);
    assert.match(again.stderr, /SIGNATURE_INVALID/);
    assert.deepEqual(
      volumesOf(stateDir, key).map((v) => [v.state, v.blob]),
      [['unpacked', 'unpacking']],
    );
    assert.deepEqual(hostInventory(stateDir).mounts, []);
    await s3.putObject(bucket, `${key}.sig`, keys.sign(trusted, tar));
    json(await runCli(['process-image', '--s3-key', key, '--json'], viaProxy(ecdsaOnly)));
    assert.equal(objectGets(proxy, key), gets0, 'nothing fetched after the crash');
    assert.equal((await show(key)).image.status, 'ready');
  });

  for (const how of ['gc', 'pool evict', 'remove'] as const) {
    test(`${how} releases a volume held for a new signature`, async (t) => {
      const dir = mkdtempSync(join(tmpdir(), 'thinrelay-trust-held-'));
      t.after(async () => {
        await runCli(['pool', 'destroy', '--force'], {
          ...env({ mode: 'off' }),
          THINRELAY_STATE_DIR: dir,
        });
        releaseStateDir(dir);
      });
      const inDir = (policy: object, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
        ...env(policy),
        THINRELAY_STATE_DIR: dir,
        ...extra,
      });
      const key = `img/held-${how.replace(' ', '-')}.tar`;
      const tar = await smallRootfsTar(`held ${how}`);
      await s3.putObject(bucket, key, tar);
      await s3.putObject(bucket, `${key}.sig`, keys.sign(other, tar));
      const r = await runCli(['process-image', '--s3-key', key], inDir(requirePolicy()));
      assert.equal(r.code, 1, r.stderr);
      assert.deepEqual(
        volumesOf(dir, key).map((v) => v.state),
        ['unpacked'],
      );
      const released =
        how === 'gc'
          ? await runCli(['gc', '--json'], inDir({ mode: 'off' }))
          : how === 'remove'
            ? await runCli(['remove', key, '--json'], inDir({ mode: 'off' }))
            : await runCli(
                ['pool', 'evict', '--json'],
                inDir(
                  { mode: 'off' },
                  { THINRELAY_POOL_HIGH_WATERMARK: '2%', THINRELAY_POOL_LOW_WATERMARK: '1%' },
                ),
              );
      assert.equal(released.code, 0, released.stderr);
      assert.deepEqual(
        volumesOf(dir, key).map((v) => [v.state, v.blob]),
        [['removed', how === 'remove' ? 'removed' : 'failed']],
      );
      const store = StateStore.open(dir, { readonly: true });
      try {
        // gc and eviction release the volume only: the image stays failed (a re-sign downloads again).
        const image = store.images.latestByKey(key)!;
        assert.equal(image.status, how === 'remove' ? 'removed' : 'failed');
        if (how !== 'remove') assert.equal(image.error_code, 'SIGNATURE_INVALID');
      } finally {
        store.close();
      }
      assert.deepEqual(hostInventory(dir).mounts, []);
    });
  }
});
