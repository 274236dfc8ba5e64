/**
 * A private Sigstore made with openssl for the bundle tests, all offline: a
 * root CA (the "Fulcio" of the trusted root), a short-lived leaf certificate
 * carrying a keyless identity (SAN + Fulcio issuer extension
 * 1.3.6.1.4.1.57264.1.8), an RFC 3161 timestamp authority under the same root
 * (`openssl ts -reply`), the trusted_root.json naming both, and bundles
 * (v0.3, message signature) signed by the leaf key and timestamped.
 * What it cannot make: Rekor entries with inclusion proofs and SCTs from a CT
 * log, so bundles from it verify with tlogEntries 0 and ctlogSCTs 0.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { KeyDir } from './signing-keys.js';

export const FULCIO_ISSUER_OID = '1.3.6.1.4.1.57264.1.8';

function openssl(args: string[], cwd: string): Buffer {
  return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

function der(pemFile: string, cwd: string): string {
  return openssl(['x509', '-in', pemFile, '-outform', 'DER'], cwd).toString('base64');
}

export interface TestSigstore {
  trustedRootFile: string;
  /** A bundle for `payload` signed as (issuer, subject). */
  bundle(payload: Buffer, identity: { issuer: string; subject: string }): Record<string, unknown>;
}

/** Builds the CA and the TSA in `dir` (a KeyDir), and writes trusted_root.json there. */
export function testSigstore(keys: KeyDir): TestSigstore {
  const cwd = keys.dir;
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      '/O=thinrelay-test/CN=test-fulcio-root',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    cwd,
  );
  const issue = (name: string, subj: string, ext: string): void => {
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`], cwd);
    openssl(['req', '-new', '-key', `${name}.key`, '-subj', subj, '-out', `${name}.csr`], cwd);
    writeFileSync(keys.path(`${name}.ext`), ext);
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.pem',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '1',
        '-extfile',
        `${name}.ext`,
        '-out',
        `${name}.pem`,
      ],
      cwd,
    );
  };
  issue(
    'tsa',
    '/O=thinrelay-test/CN=test-tsa',
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,timeStamping\n',
  );
  writeFileSync(
    keys.path('ts.cnf'),
    '[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\nserial = ./tsaserial\nsigner_digest = sha256\n' +
      'default_policy = 1.2.3.4.1\ndigests = sha256\ness_cert_id_alg = sha256\naccuracy = secs:1\n',
  );
  writeFileSync(keys.path('tsaserial'), '01\n');
  const start = '2020-01-01T00:00:00Z';
  const subject = { organization: 'thinrelay-test', commonName: 'test' };
  const root = {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [],
    ctlogs: [],
    certificateAuthorities: [
      {
        subject,
        uri: 'https://fulcio.test',
        certChain: { certificates: [{ rawBytes: der('ca.pem', cwd) }] },
        validFor: { start },
      },
    ],
    timestampAuthorities: [
      {
        subject,
        uri: 'https://tsa.test',
        certChain: {
          certificates: [{ rawBytes: der('tsa.pem', cwd) }, { rawBytes: der('ca.pem', cwd) }],
        },
        validFor: { start },
      },
    ],
  };
  const trustedRootFile = keys.path('trusted_root.json');
  writeFileSync(trustedRootFile, JSON.stringify(root));
  let n = 0;
  return {
    trustedRootFile,
    bundle(payload, identity) {
      const leaf = `leaf${++n}`;
      issue(
        leaf,
        '/',
        'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' +
          `subjectAltName=critical,URI:${identity.subject}\n` +
          `${FULCIO_ISSUER_OID}=ASN1:UTF8String:${identity.issuer}\n`,
      );
      writeFileSync(keys.path(`${leaf}.payload`), payload);
      openssl(
        ['dgst', '-sha256', '-sign', `${leaf}.key`, '-out', `${leaf}.sig`, `${leaf}.payload`],
        cwd,
      );
      openssl(
        [
          'ts',
          '-query',
          '-data',
          `${leaf}.sig`,
          '-sha256',
          '-cert',
          '-no_nonce',
          '-out',
          `${leaf}.tsq`,
        ],
        cwd,
      );
      openssl(
        [
          'ts',
          '-reply',
          '-queryfile',
          `${leaf}.tsq`,
          '-inkey',
          'tsa.key',
          '-signer',
          'tsa.pem',
          '-config',
          'ts.cnf',
          '-out',
          `${leaf}.tsr`,
        ],
        cwd,
      );
      return {
        mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
        verificationMaterial: {
          certificate: { rawBytes: der(`${leaf}.pem`, cwd) },
          tlogEntries: [],
          timestampVerificationData: {
            rfc3161Timestamps: [
              { signedTimestamp: readFileSync(keys.path(`${leaf}.tsr`)).toString('base64') },
            ],
          },
        },
        messageSignature: {
          messageDigest: {
            algorithm: 'SHA2_256',
            digest: createHash('sha256').update(payload).digest('base64'),
          },
          signature: readFileSync(keys.path(`${leaf}.sig`)).toString('base64'),
        },
      };
    },
  };
}
