/**
 * Container images and flat tars, as the unpack step sees them: an uploaded
 * object is an ordered list of layers (layer-source.ts), opened from the S3
 * stream (image-source.ts: flat tars streamed, container archives spooled
 * and verified) and applied one by one onto a chain of volumes.
 */
export { openImage, describeImage, type SourcedImage } from './image-source.js';
export {
  chainIdsOf,
  flatChainId,
  type LayerSource,
  type OpenedImage,
  type LayerDigests,
} from './layer-source.js';
export type { ContainerImage } from './container-image.js';
export { looksLikeImageLayout } from './sniff.js';
export type { RunConfig } from './image-config.js';
