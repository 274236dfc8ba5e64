/**
 * ECDSA P-256 verification from a SHA-256 digest already computed (FIPS 186-5
 * §6.4.2). A flat image's signature covers its bytes; their sha256 is computed
 * while the object streams into the unpacker, and node:crypto can only verify
 * ECDSA by hashing the message itself — which would mean reading the object a
 * second time, and after a restart or a late sidecar, downloading it again.
 * This checks the signature against the recorded digest instead: public data
 * only (no secret, so no constant-time concern), checked against openssl's
 * signatures in test/unit/trust-signature.test.ts.
 */
import type { KeyObject } from 'node:crypto';

const P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn;
const N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
const G: Affine = {
  x: 0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296n,
  y: 0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5n,
};

interface Affine {
  x: bigint;
  y: bigint;
}
/** Jacobian coordinates; z = 0 is the point at infinity. */
interface Jacobian {
  x: bigint;
  y: bigint;
  z: bigint;
}

const INFINITY: Jacobian = { x: 1n, y: 1n, z: 0n };

function mod(a: bigint, m: bigint): bigint {
  const r = a % m;
  return r < 0n ? r + m : r;
}

function pow(base: bigint, exp: bigint, m: bigint): bigint {
  let result = 1n;
  let b = mod(base, m);
  for (let e = exp; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % m;
    b = (b * b) % m;
  }
  return result;
}

/** Modular inverse by Fermat (both moduli are prime). */
function inverse(a: bigint, m: bigint): bigint {
  return pow(a, m - 2n, m);
}

function double(p: Jacobian): Jacobian {
  if (p.z === 0n || p.y === 0n) return INFINITY;
  // a = -3: alpha = 3(X - Z²)(X + Z²).
  const delta = (p.z * p.z) % P;
  const gamma = (p.y * p.y) % P;
  const beta = (p.x * gamma) % P;
  const alpha = mod(3n * (p.x - delta) * (p.x + delta), P);
  const x = mod(alpha * alpha - 8n * beta, P);
  const z = mod((p.y + p.z) * (p.y + p.z) - gamma - delta, P);
  const y = mod(alpha * (4n * beta - x) - 8n * gamma * gamma, P);
  return { x, y, z };
}

function add(p: Jacobian, q: Jacobian): Jacobian {
  if (p.z === 0n) return q;
  if (q.z === 0n) return p;
  const pz2 = (p.z * p.z) % P;
  const qz2 = (q.z * q.z) % P;
  const u1 = (p.x * qz2) % P;
  const u2 = (q.x * pz2) % P;
  const s1 = (((p.y * qz2) % P) * q.z) % P;
  const s2 = (((q.y * pz2) % P) * p.z) % P;
  if (u1 === u2) return s1 === s2 ? double(p) : INFINITY;
  const h = mod(u2 - u1, P);
  const r = mod(s2 - s1, P);
  const h2 = (h * h) % P;
  const h3 = (h2 * h) % P;
  const x = mod(r * r - h3 - 2n * u1 * h2, P);
  const y = mod(r * (u1 * h2 - x) - s1 * h3, P);
  const z = (((h * p.z) % P) * q.z) % P;
  return { x, y, z };
}

/** u1·G + u2·Q by one double-and-add pass (Shamir's trick). */
function twoMultiples(u1: bigint, u2: bigint, q: Affine): Jacobian {
  const g: Jacobian = { ...G, z: 1n };
  const qj: Jacobian = { ...q, z: 1n };
  const both = add(g, qj);
  let acc = INFINITY;
  const bits = Math.max(u1.toString(2).length, u2.toString(2).length);
  for (let i = bits - 1; i >= 0; i--) {
    acc = double(acc);
    const a = (u1 >> BigInt(i)) & 1n;
    const b = (u2 >> BigInt(i)) & 1n;
    if (a && b) acc = add(acc, both);
    else if (a) acc = add(acc, g);
    else if (b) acc = add(acc, qj);
  }
  return acc;
}

function onCurve(q: Affine): boolean {
  if (q.x < 0n || q.x >= P || q.y < 0n || q.y >= P) return false;
  return mod(q.y * q.y - (q.x * q.x * q.x - 3n * q.x + B), P) === 0n;
}

/** r and s of a DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs), strictly; null if it is not one. */
export function parseDerSignature(der: Buffer): { r: bigint; s: bigint } | null {
  if (der.length < 8 || der[0] !== 0x30 || der[1] !== der.length - 2) return null;
  let at = 2;
  const integer = (): bigint | null => {
    if (der[at] !== 0x02) return null;
    const len = der[at + 1];
    if (len === undefined || len === 0 || len > 33 || at + 2 + len > der.length) return null;
    const bytes = der.subarray(at + 2, at + 2 + len);
    // Minimal, non-negative encoding only.
    if (bytes[0]! & 0x80) return null;
    if (len > 1 && bytes[0] === 0 && !(bytes[1]! & 0x80)) return null;
    at += 2 + len;
    return BigInt(`0x${bytes.toString('hex')}`);
  };
  const r = integer();
  const s = integer();
  if (r === null || s === null || at !== der.length) return null;
  return { r, s };
}

function pointOf(key: KeyObject): Affine {
  const jwk = key.export({ format: 'jwk' });
  const int = (b64: string | undefined): bigint =>
    BigInt(`0x${Buffer.from(b64 ?? '', 'base64url').toString('hex') || '0'}`);
  return { x: int(jwk.x), y: int(jwk.y) };
}

/** True when `der` is a valid ECDSA P-256 signature by `key` of the message whose SHA-256 is `sha256`. */
export function verifyP256Digest(key: KeyObject, sha256: Buffer, der: Buffer): boolean {
  if (sha256.length !== 32) return false;
  const sig = parseDerSignature(der);
  if (sig === null) return false;
  const { r, s } = sig;
  if (r < 1n || r >= N || s < 1n || s >= N) return false;
  const q = pointOf(key);
  if (!onCurve(q)) return false;
  // The digest is exactly n's bit length (256): no truncation.
  const e = BigInt(`0x${sha256.toString('hex')}`);
  const w = inverse(s, N);
  const point = twoMultiples(mod(e * w, N), mod(r * w, N), q);
  if (point.z === 0n) return false;
  const zInv = inverse(point.z, P);
  const x = (point.x * ((zInv * zInv) % P)) % P;
  return mod(x, N) === r;
}
