/**
 * Member names come from an untrusted archive and end up in logs, the job
 * database and an operator's terminal: render them quoted, with control and
 * bidi characters escaped, and cut to a sane length.
 */
const MAX_SHOWN = 200;

// C0/C1 controls, line/paragraph separators and bidi overrides/isolates.
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/gu;

function escapeChar(c: string): string {
  return `\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}`;
}

/** A string from the archive, quoted and made safe to print on one line. */
export function printable(text: string): string {
  const cut = text.length > MAX_SHOWN ? `${text.slice(0, MAX_SHOWN)}…` : text;
  return `'${cut.replace(/[\\']/g, '\\$&').replace(UNSAFE, escapeChar)}'`;
}

/** Raw name bytes that are not valid UTF-8: printable ASCII as is, the rest as \xHH. */
export function printableBytes(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes.subarray(0, MAX_SHOWN)) {
    out +=
      b >= 0x20 && b < 0x7f && b !== 0x5c && b !== 0x27
        ? String.fromCharCode(b)
        : `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return `'${out}${bytes.length > MAX_SHOWN ? '…' : ''}'`;
}
