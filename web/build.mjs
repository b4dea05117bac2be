// Builds the page the signaling server embeds: web/dist/{index.html, style.css, app.js,
// worker.js}. Run through `scripts/build-web` (which installs the locked dependencies first).
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';

const dist = new URL('./dist/', import.meta.url);
await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
const common = { bundle: true, minify: true, format: 'iife', target: 'chrome120', legalComments: 'eof', logLevel: 'warning' };
await build({ ...common, entryPoints: ['src/page/app.js'], outfile: 'dist/app.js' });
await build({ ...common, entryPoints: ['src/page/worker.js'], outfile: 'dist/worker.js' });
for (const f of ['index.html', 'style.css']) await copyFile(new URL(`./static/${f}`, import.meta.url), new URL(f, dist));
