/** The fleet table's item codec, shared with the agent: see schema/item-codec.ts. */
export * from '../../schema/item-codec.js';
