/**
 * fsync of a directory: makes its entries (a rename into it, a new file)
 * survive a power loss. An fsync of the file alone promises its data, not
 * the name it was renamed to.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

/** On the thread pool, like the file fsyncs it follows. */
export async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
