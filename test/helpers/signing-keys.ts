/**
 * Signing material for the trust tests, made with the openssl CLI as a user
 * would (never with the code under test): ECDSA P-256 and Ed25519 key pairs,
 * cosign-format signatures (base64 DER ECDSA over SHA-256, pure Ed25519 over
 * the raw message) and key fingerprints from `openssl pkey -outform DER`.
 */
import { execFileSync as run, type ExecFileSyncOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** openssl, its chatter ("read EC key") kept out of the test output. */
function execFileSync(file: string, args: string[], options: ExecFileSyncOptions = {}): Buffer {
  return run(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options }) as Buffer;
}

export interface TestKey {
  algorithm: 'ecdsa-p256' | 'ed25519';
  privateKeyFile: string;
  publicKeyFile: string;
  publicKeyPem: string;
  /** sha256 of the DER SubjectPublicKeyInfo as openssl writes it. */
  fingerprint: string;
}

export class KeyDir {
  readonly dir = mkdtempSync(join(tmpdir(), 'thinrelay-trust-'));
  private n = 0;

  path(name: string): string {
    return join(this.dir, name);
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  ecdsa(): TestKey {
    const priv = this.path(`ec-${++this.n}.key`);
    execFileSync('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', priv]);
    return this.publicHalf('ecdsa-p256', priv, ['ec']);
  }

  ed25519(): TestKey {
    const priv = this.path(`ed-${++this.n}.key`);
    execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', priv]);
    return this.publicHalf('ed25519', priv, ['pkey']);
  }

  /** A key of a kind the policy refuses (e.g. ['genpkey', '-algorithm', 'rsa'] or P-384). */
  otherPublicKeyPem(genArgs: string[]): string {
    const priv = this.path(`other-${++this.n}.key`);
    execFileSync('openssl', [...genArgs, '-out', priv]);
    return execFileSync('openssl', ['pkey', '-in', priv, '-pubout']).toString('utf8');
  }

  /** Writes `bytes` to a file and signs it the way the docs tell users to; base64 text, as cosign prints. */
  sign(key: TestKey, bytes: Buffer | string): string {
    const file = this.path(`msg-${++this.n}`);
    writeFileSync(file, bytes);
    const sig =
      key.algorithm === 'ecdsa-p256'
        ? execFileSync('openssl', ['dgst', '-sha256', '-sign', key.privateKeyFile, file])
        : execFileSync('openssl', [
            'pkeyutl',
            '-sign',
            '-inkey',
            key.privateKeyFile,
            '-rawin',
            '-in',
            file,
          ]);
    return sig.toString('base64');
  }

  private publicHalf(algorithm: TestKey['algorithm'], priv: string, tool: string[]): TestKey {
    const pub = `${priv}.pub`;
    execFileSync('openssl', [...tool, '-in', priv, '-pubout', '-out', pub]);
    const der = execFileSync('openssl', ['pkey', '-pubin', '-in', pub, '-outform', 'DER']);
    return {
      algorithm,
      privateKeyFile: priv,
      publicKeyFile: pub,
      publicKeyPem: readFileSync(pub, 'utf8'),
      fingerprint: `sha256:${createHash('sha256').update(der).digest('hex')}`,
    };
  }
}
