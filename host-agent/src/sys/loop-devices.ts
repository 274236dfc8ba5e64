/** Loop devices via util-linux losetup. */
import { run } from './exec.js';

export interface LoopAttachment {
  device: string;
  backingFile: string;
  /** The backing file was deleted while attached. */
  deleted: boolean;
}

export async function attachLoop(file: string): Promise<string> {
  // losetup picks a free device and retries on a race with another attacher.
  return run('losetup', ['--find', '--show', '--', file]);
}

export async function detachLoop(device: string): Promise<void> {
  await run('losetup', ['--detach', device]);
}

export async function listLoops(): Promise<LoopAttachment[]> {
  const out = await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']);
  if (out.trim() === '') return [];
  const parsed = JSON.parse(out) as { loopdevices?: { name: string; 'back-file': string | null }[] };
  return (parsed.loopdevices ?? []).map((d) => {
    const back = d['back-file'] ?? '';
    const deleted = back.endsWith(' (deleted)');
    return {
      device: d.name,
      backingFile: deleted ? back.slice(0, -' (deleted)'.length) : back,
      deleted,
    };
  });
}

export async function loopsFor(file: string): Promise<string[]> {
  return (await listLoops()).filter((l) => l.backingFile === file).map((l) => l.device);
}
