/**
 * The `thinrelay …` command lines a document shows in its code blocks, as
 * argument lists: what an operator would copy. Continuation lines are joined,
 * comments, pipes and redirections cut off, `sudo`, `npx` and variable
 * assignments in front dropped; `$VAR` and `$(…)` stand for one value.
 */
export interface DocCommand {
  file: string;
  line: number;
  text: string;
  args: string[];
}

/** Shell-like words of one command: quotes grouped, substitutions one word. */
function words(segment: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < segment.length; i++) {
    const c = segment[i]!;
    if (c === "'" || c === '"') {
      const end = segment.indexOf(c, i + 1);
      cur += segment.slice(i + 1, end === -1 ? undefined : end);
      i = end === -1 ? segment.length : end;
      inWord = true;
    } else if (c === '$' && segment[i + 1] === '(') {
      let depth = 0;
      let j = i + 1;
      for (; j < segment.length; j++) {
        if (segment[j] === '(') depth++;
        else if (segment[j] === ')' && --depth === 0) break;
      }
      cur += 'VALUE';
      i = j;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) out.push(cur);
  return out.map((w) => w.replace(/\$\{?[A-Za-z_][A-Za-z0-9_]*\}?/g, 'VALUE'));
}

/** Split a shell line at the operators between commands (outside quotes). */
function segments(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote !== null) {
      if (c === quote) quote = null;
      cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      cur += c;
    } else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) break;
    else if (c === '|' || c === ';' || c === '&' || c === '>' || c === '<') {
      if (c === '>' || c === '<') {
        // A redirection ends the command's words (2>&1, > file).
        out.push(cur.replace(/\s\d$/, ''));
        cur = '';
        break;
      }
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out.map((s) => s.trim()).filter((s) => s !== '');
}

export function docCommands(file: string, text: string): DocCommand[] {
  const found: DocCommand[] = [];
  const lines = text.split('\n');
  let fence: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const opener = /^\s*(```+|~~~+)\s*(\S*)/.exec(raw);
    if (opener !== null) {
      fence = fence === null ? opener[1]! : raw.trim().startsWith(fence) ? null : fence;
      continue;
    }
    if (fence === null) continue;
    let logical = raw;
    const start = i;
    while (logical.endsWith('\\') && i + 1 < lines.length)
      logical = logical.slice(0, -1) + ' ' + lines[++i];
    logical = logical.replace(/^\s*[$#]\s+(?=\S)/, (m) => (m.includes('#') ? '#' : ''));
    for (const segment of segments(logical)) {
      let w = words(segment);
      while (
        w.length > 0 &&
        (w[0] === 'sudo' || w[0] === 'npx' || w[0] === 'exec' || /^[A-Z_][A-Z0-9_]*=/.test(w[0]!))
      )
        w = w.slice(1);
      if (w[0] !== 'thinrelay' && w[0] !== '/usr/bin/thinrelay') continue;
      found.push({ file, line: start + 1, text: segment, args: w.slice(1) });
    }
  }
  return found;
}
