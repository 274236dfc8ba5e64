/**
 * Plain values ⇄ DynamoDB attribute values, for the fleet table's items
 * (strings, numbers, booleans, null, lists, maps). Small enough not to pull
 * in @aws-sdk/util-dynamodb, which is versioned apart from the client.
 */
import type { AttributeValue } from '@aws-sdk/client-dynamodb';

export type Plain = string | number | boolean | null | Plain[] | { [k: string]: Plain };

export function toAttr(v: Plain): AttributeValue {
  if (v === null) return { NULL: true };
  if (typeof v === 'string') return { S: v };
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`not a finite number: ${v}`);
    return { N: String(v) };
  }
  if (typeof v === 'boolean') return { BOOL: v };
  if (Array.isArray(v)) return { L: v.map(toAttr) };
  return { M: toItem(v) };
}

export function toItem(o: { [k: string]: Plain | undefined }): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = toAttr(v);
  return out;
}

export function fromAttr(a: AttributeValue): Plain {
  if (a.S !== undefined) return a.S;
  if (a.N !== undefined) return Number(a.N);
  if (a.BOOL !== undefined) return a.BOOL;
  if (a.NULL !== undefined) return null;
  if (a.L !== undefined) return a.L.map(fromAttr);
  if (a.M !== undefined) return fromItem(a.M);
  if (a.SS !== undefined) return a.SS;
  if (a.NS !== undefined) return a.NS.map(Number);
  throw new Error(`unsupported attribute type: ${Object.keys(a).join(',')}`);
}

export function fromItem(item: Record<string, AttributeValue>): { [k: string]: Plain } {
  const out: { [k: string]: Plain } = {};
  for (const [k, v] of Object.entries(item)) out[k] = fromAttr(v);
  return out;
}
