/** The JSON log lines a CLI run wrote on stderr (other lines skipped), typed as the caller reads them. */
export function logLines<T extends object>(stderr: string): T[] {
  const out: T[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as T);
    } catch {
      // not a log line
    }
  }
  return out;
}
