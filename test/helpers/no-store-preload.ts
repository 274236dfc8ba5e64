/**
 * Preloaded into a thinrelay CLI process (`node --import`) by tests that show
 * a command never opens the state database: the CLI bundle's better-sqlite3
 * is swapped for one that refuses to open any images.db (the process fails
 * with STORE_OPENED in its error line); other files (the lock files) open as
 * usual. Tests pass storeGuardArgs (cli.ts) as runCli's nodeArgs.
 */
import { createRequire, registerHooks } from 'node:module';
import { pathToFileURL } from 'node:url';

const realPath = createRequire(import.meta.url).resolve('better-sqlite3');
const guardedUrl = `${pathToFileURL(realPath).href}?thinrelay-store-guard`;

const source = `
import { createRequire } from 'node:module';
const Real = createRequire(${JSON.stringify(import.meta.url)})(${JSON.stringify(realPath)});
export default function Database(path, options) {
  if (String(path).endsWith('images.db'))
    throw new Error('STORE_OPENED: this process opened the state database ' + path);
  return new Real(path, options);
}
Database.prototype = Real.prototype;
Object.setPrototypeOf(Database, Real);
`;

registerHooks({
  resolve(specifier, context, nextResolve) {
    if (specifier === 'better-sqlite3' && context.parentURL?.includes('/dist/cli/') === true)
      return { url: guardedUrl, format: 'module', shortCircuit: true };
    return nextResolve(specifier, context);
  },
  load(url, context, nextLoad) {
    if (url !== guardedUrl) return nextLoad(url, context);
    return { format: 'module', source, shortCircuit: true };
  },
});
