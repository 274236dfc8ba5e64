/**
 * The unpacker: an S3 image tarball (plain or gzip tar) into a fresh
 * filesystem, as faithfully as GNU tar and without ever writing outside it.
 */
export { unpackArchive, type UnpackOptions, type UnpackStats } from './unpack.js';
