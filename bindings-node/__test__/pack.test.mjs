// `npm pack` produces a tarball that installs into a fresh directory (no registry
// needed) and works there: the native addon is inside the tarball.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { PACKAGE_DIR, runNode } from './helpers.mjs'

function npm(args, cwd) {
  const result = spawnSync('npm', args, { cwd, encoding: 'utf8', shell: process.platform === 'win32' })
  assert.equal(result.status, 0, `npm ${args.join(' ')} failed:\n${result.stdout}\n${result.stderr}`)
  return result.stdout
}

// Runs inside the fresh directory: the installed package, not this checkout.
const CHECK = `
import net from 'node:net'
import { createRequire } from 'node:module'
import { Engine, SignalServer } from 'stunfwd'

const require = createRequire(import.meta.url)
const signal = await SignalServer.start()
const echo = net.createServer((s) => s.pipe(s))
await new Promise((resolve) => echo.listen(0, '127.0.0.1', resolve))
const base = { room: 'pack', secret: 'p', signalUrl: signal.url, stunServers: [signal.stunAddr], bind: '127.0.0.1:0' }
const server = Engine.start({ ...base, mode: 'server' })
const client = Engine.start({ ...base, mode: 'client', mappings: ['tcp:0:127.0.0.1:' + echo.address().port] })
await client.waitConnected(20000)
const reply = await new Promise((resolve, reject) => {
  const socket = net.connect(client.mappings()[0].port, '127.0.0.1', () => socket.end('from the tarball'))
  let got = ''
  socket.on('data', (d) => (got += d))
  socket.on('end', () => resolve(got))
  socket.on('error', reject)
})
await Promise.all([client.stop(), server.stop(), signal.stop()])
await new Promise((resolve) => echo.close(resolve))
console.log(JSON.stringify({ reply, resolved: require.resolve('stunfwd') }))
`

test('npm pack -> npm install <tarball> in a fresh directory -> a tunnel works', { timeout: 180000 }, async (t) => {
  const nodeFile = readdirSync(PACKAGE_DIR).find((f) => f.endsWith('.node'))
  assert.ok(nodeFile, 'no .node file next to package.json: run `npm run build` first')

  const work = realpathSync(mkdtempSync(join(tmpdir(), 'stunfwd-pack-')))
  t.after(() => rmSync(work, { recursive: true, force: true }))
  const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', work], PACKAGE_DIR))[0]
  const files = packed.files.map((f) => f.path)
  t.diagnostic(`${packed.filename}: ${(packed.size / 1e6).toFixed(1)} MB, ${files.join(', ')}`)
  for (const f of ['package.json', 'index.js', 'index.d.ts', 'README.md', nodeFile]) {
    assert.ok(files.includes(f), `${f} is in the tarball (${files})`)
  }
  assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('__test__/')), `only the package's files: ${files}`)

  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }))
  npm(['install', '--offline', '--no-audit', '--no-fund', join(work, packed.filename)], app)
  assert.ok(existsSync(join(app, 'node_modules', 'stunfwd', nodeFile)))

  writeFileSync(join(app, 'check.mjs'), CHECK)
  const result = await runNode(join(app, 'check.mjs'), [], { cwd: app, timeoutMs: 60000 })
  assert.equal(result.code, 0, result.stderr)
  const out = JSON.parse(result.stdout.trim().split('\n').at(-1))
  assert.equal(out.reply, 'from the tarball')
  assert.equal(out.resolved, join(app, 'node_modules', 'stunfwd', 'index.js'))
})
