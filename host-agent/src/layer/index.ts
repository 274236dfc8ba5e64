/**
 * Layers: everything between a tar's bytes and the files it leaves on a
 * filesystem, in one folder. Reading tar (tar-header.ts and pax.ts parse
 * headers for both the streaming reader, tar-reader.ts, and the index of a
 * local or remote tar, tar-index.ts), compression (compression.ts), where a
 * member may go (path-policy.ts), the one whiteout model (whiteout.ts and
 * the extractor's layer mode, over the lower layers on disk: lower-tree.ts),
 * and writing (extractor.ts, entry-writer.ts, metadata.ts, end-script.ts).
 *
 * Two entry points: unpackArchive, a flat rootfs tar (plain or gzip) into a
 * fresh filesystem, as faithfully as GNU tar; applyLayer, one OCI layer onto
 * the layers below it, as umoci applies it. Neither ever writes outside its
 * root. Recording a layer in the store (intent, seal, sharing by chain ID)
 * is pipeline/layer-unit.ts's job; finding the layers in an uploaded object
 * is image/'s.
 */
export { unpackArchive, type UnpackOptions, type UnpackStats } from './unpack.js';
export { applyLayer, type ApplyLayerOptions, type LayerApplyStats } from './apply-layer.js';
