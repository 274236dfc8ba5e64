/** Tests that need loop devices and mounts run only as root; they say so when skipped. */
export const isRoot = process.getuid?.() === 0;
export const needsRoot: string | false = isRoot ? false : 'needs root (loop devices, mkfs, mounts)';
