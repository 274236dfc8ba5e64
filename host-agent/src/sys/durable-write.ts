/**
 * Replace a small file atomically and durably: write a temporary beside it,
 * fsync it, rename it over the file, fsync the directory. Without the last
 * step a power loss can undo the rename after we acted on it.
 */
import { constants } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDirectory } from './fsync-dir.js';

export async function writeFileDurably(
  path: string,
  data: string,
  opts: { mode: number },
): Promise<void> {
  const tmp = `${path}.tmp`;
  const handle = await open(
    tmp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC,
    opts.mode,
  );
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, path);
  await fsyncDirectory(dirname(path));
}
