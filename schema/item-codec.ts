/**
 * Plain JSON-like values ⇄ DynamoDB attribute values, for the fleet table's
 * items (schema/fleet.ts): strings, finite numbers, booleans, null, lists and
 * maps. Sets and binary are never written to that table. Shared by the
 * Lambdas and the agent, so both read and write items the same way.
 */
import type { AttributeValue } from '@aws-sdk/client-dynamodb';

export type Plain = string | number | boolean | null | Plain[] | { [key: string]: Plain };

export function toAttribute(value: Plain): AttributeValue {
  if (value === null) return { NULL: true };
  if (typeof value === 'string') return { S: value };
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError(`cannot store number ${value}`);
    return { N: String(value) };
  }
  if (typeof value === 'boolean') return { BOOL: value };
  if (Array.isArray(value)) return { L: value.map(toAttribute) };
  return { M: toItem(value) };
}

export function toItem(value: { [key: string]: Plain }): Record<string, AttributeValue> {
  const item: Record<string, AttributeValue> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v !== undefined) item[k] = toAttribute(v);
  }
  return item;
}

export function fromAttribute(a: AttributeValue): Plain {
  if (a.S !== undefined) return a.S;
  if (a.N !== undefined) return Number(a.N);
  if (a.BOOL !== undefined) return a.BOOL;
  if (a.NULL !== undefined) return null;
  if (a.L !== undefined) return a.L.map(fromAttribute);
  if (a.M !== undefined) return fromItem(a.M);
  if (a.SS !== undefined) return a.SS;
  if (a.NS !== undefined) return a.NS.map(Number);
  throw new TypeError(`unsupported attribute value ${JSON.stringify(Object.keys(a))}`);
}

export function fromItem(item: Record<string, AttributeValue>): { [key: string]: Plain } {
  const value: { [key: string]: Plain } = {};
  for (const [k, v] of Object.entries(item)) value[k] = fromAttribute(v);
  return value;
}
