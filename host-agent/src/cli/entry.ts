#!/usr/bin/env node
/**
 * The bundled CLI's entry (dist/cli/thinrelay.mjs): turns on the compile cache
 * (compile-cache.ts) before the command line's modules load, so they are
 * cached too — enabled from main.ts, it would come after Node had compiled
 * everything main.ts imports.
 */
import { enableCliCompileCache } from './compile-cache.js';

enableCliCompileCache();
await import('./main.js');
