// The packages as published, napi-rs style, made by scripts/package-node: the main
// package (loader and types, no addon; optionalDependencies on every platform package,
// as a release writes them) and this platform's package (npm/<platform>/, the addon
// alone), both installed with `npm install --offline` into a fresh directory by a PATH without
// `cargo`, `rustc` or `rustup`, and a tunnel working there with the addon loaded from
// the platform package. npm cannot look up the other platforms' optional dependencies
// offline and must skip them without failing the install.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, delimiter, join } from 'node:path'
import { test } from 'node:test'

import { parseTriple } from '@napi-rs/cli'

import { PACKAGE_DIR, runNode } from './helpers.mjs'

const PKG = JSON.parse(readFileSync(join(PACKAGE_DIR, 'package.json'), 'utf8'))
const RUST_TOOLS = ['cargo', 'rustc', 'rustup']
const exe = (name) => (process.platform === 'win32' ? [name, `${name}.exe`, `${name}.cmd`] : [name])

/** `process.env.PATH` without the directories that hold a Rust tool (`~/.cargo/bin`). */
function pathWithoutRust() {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean)
  const kept = dirs.filter((dir) => !RUST_TOOLS.some((tool) => exe(tool).some((f) => existsSync(join(dir, f)))))
  return { path: kept.join(delimiter), removed: [...new Set(dirs.filter((d) => !kept.includes(d)))] }
}

/** The directories of `path` that hold `name`. */
function whichAll(name, path) {
  return path.split(delimiter).filter((dir) => dir && exe(name).some((f) => existsSync(join(dir, f))))
}

/** The environment of everything run in the fresh directory: no Rust on the PATH or in
 * the environment, an npm cache of its own (empty at first) and a registry address that
 * refuses connections, so that nothing can come from the network or a warm cache. */
function freshEnv(work) {
  const env = { ...process.env }
  // Undefined rather than deleted: child_process leaves such variables out, also when
  // this environment is merged over process.env (runNode).
  for (const key of Object.keys(env)) {
    if (/^(CARGO|RUSTUP|RUSTC|RUST)_/.test(key) || /^npm_/i.test(key)) env[key] = undefined
  }
  return {
    ...env,
    PATH: pathWithoutRust().path,
    npm_config_cache: join(work, 'npm-cache'),
    npm_config_registry: 'http://127.0.0.1:9/',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
  }
}

function npm(args, cwd, env = process.env) {
  const result = spawnSync('npm', args, { cwd, env, encoding: 'utf8', shell: process.platform === 'win32' })
  assert.equal(result.status, 0, `npm ${args.join(' ')} failed:\n${result.stdout}\n${result.stderr}`)
  return result
}

/** Runs scripts/package-node into `dest`: the main and this platform's tarball. */
function packageNode(dest) {
  const result = spawnSync('bash', [join(PACKAGE_DIR, '..', 'scripts', 'package-node'), '--out', dest], { encoding: 'utf8' })
  assert.equal(result.status, 0, `scripts/package-node failed:\n${result.stdout}\n${result.stderr}`)
  const [mainTgz, nativeTgz] = result.stdout.trim().split('\n')
  return { main: describe(mainTgz), native: describe(nativeTgz) }
}

/** What a tarball holds: its package.json and its file list (`tar` reads it). */
function describe(tgz) {
  const list = spawnSync('tar', ['-tzf', tgz], { encoding: 'utf8' })
  assert.equal(list.status, 0, list.stderr)
  const paths = list.stdout.trim().split('\n').map((p) => p.replace(/^package\//, '')).sort()
  const manifest = spawnSync('tar', ['-xzOf', tgz, 'package/package.json'], { encoding: 'utf8' })
  assert.equal(manifest.status, 0, manifest.stderr)
  return { ...JSON.parse(manifest.stdout), tgz, filename: basename(tgz), size: statSync(tgz).size, paths }
}

// Runs inside the fresh directory: the installed packages, not this checkout. Prints
// which `.node` files the process loaded (Node's module cache and, independently, the
// shared objects the process report lists).
const CHECK = `
import net from 'node:net'
import { createRequire } from 'node:module'
import { Engine, SignalServer, version } from 'stunfwd'

const require = createRequire(import.meta.url)
const signal = await SignalServer.start()
const echo = net.createServer((s) => s.pipe(s))
await new Promise((resolve) => echo.listen(0, '127.0.0.1', resolve))
const base = { room: 'pack', secret: 'p', signalUrl: signal.url, stunServers: [signal.stunAddr], bind: '127.0.0.1:0' }
const server = Engine.start({ ...base, mode: 'server' })
const client = Engine.start({ ...base, mode: 'client', mappings: ['tcp:0:127.0.0.1:' + echo.address().port] })
await client.waitConnected(20000)
const reply = await new Promise((resolve, reject) => {
  const socket = net.connect(client.mappings()[0].port, '127.0.0.1', () => socket.end('from the tarballs'))
  let got = ''
  socket.on('data', (d) => (got += d))
  socket.on('end', () => resolve(got))
  socket.on('error', reject)
})
await Promise.all([client.stop(), server.stop(), signal.stop()])
await new Promise((resolve) => echo.close(resolve))
const addons = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
const mapped = (process.report.getReport().sharedObjects ?? []).filter((f) => f.endsWith('.node'))
console.log(JSON.stringify({ reply, version: version(), resolved: require.resolve('stunfwd'), addons, mapped }))
`

test('npm pack of the main and the platform package -> npm install --offline without Rust -> a tunnel works', { timeout: 240000 }, async (t) => {
  const nodeFile = readdirSync(PACKAGE_DIR).find((f) => /^stunfwd\..+\.node$/.test(f))
  assert.ok(nodeFile, 'no stunfwd.<platform>.node next to package.json: run `npm run build` first')
  const platform = nodeFile.slice('stunfwd.'.length, -'.node'.length)
  const platformName = `stunfwd-${platform}`
  const platformDir = join(PACKAGE_DIR, 'npm', platform)
  assert.ok(existsSync(join(platformDir, 'package.json')), `npm/${platform}/package.json (napi create-npm-dirs)`)
  const work = realpathSync(mkdtempSync(join(tmpdir(), 'stunfwd-pack-')))
  t.after(() => rmSync(work, { recursive: true, force: true }))
  const { main, native } = packageNode(work)
  t.diagnostic(`${main.filename}: ${main.size} bytes: ${main.paths.join(', ')}`)
  t.diagnostic(`${native.filename}: ${(native.size / 1e6).toFixed(1)} MB: ${native.paths.join(', ')}`)
  assert.deepEqual(main.paths, ['LICENSE-APACHE', 'LICENSE-MIT', 'README.md', 'index.d.ts', 'index.js', 'package.json'], 'the main package: loader, types, README, licences')
  assert.ok(!main.paths.some((f) => f.endsWith('.node')), 'no addon in the main package')
  assert.deepEqual(native.paths, ['LICENSE-APACHE', 'LICENSE-MIT', 'README.md', nodeFile, 'package.json'].sort(), 'the platform package: its addon, package.json, README, licences')
  assert.equal(native.name, platformName)
  assert.equal(native.version, PKG.version)
  // The main package as published names every platform package at its own version.
  const platforms = PKG.napi.targets.map((triple) => parseTriple(triple).platformArchABI)
  assert.deepEqual(main.optionalDependencies, Object.fromEntries(platforms.map((p) => [`stunfwd-${p}`, PKG.version])))
  assert.equal(main.devDependencies, undefined, 'no devDependencies in the published package')

  // A PATH without the Rust toolchain; node and npm are still on it.
  const env = freshEnv(work)
  const { removed } = pathWithoutRust()
  t.diagnostic(`PATH without ${removed.join(', ') || '(no directory held a Rust tool)'}`)
  for (const tool of RUST_TOOLS) {
    assert.deepEqual(whichAll(tool, env.PATH), [], `${tool} is not on the PATH`)
    if (process.platform !== 'win32') {
      const found = spawnSync('sh', ['-c', `command -v ${tool}`], { env, encoding: 'utf8' })
      assert.notEqual(found.status, 0, `sh finds no ${tool}: ${found.stdout}`)
    }
  }
  assert.ok(whichAll('npm', env.PATH).length > 0, 'npm is still on the PATH')

  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }))
  const install = npm(['install', '--offline', main.tgz, native.tgz], app, env)
  t.diagnostic(`npm install --offline: ${install.stdout.trim().split('\n').at(-1)}`)
  assert.equal(install.stderr.trim(), '', 'npm install --offline printed no warning or error')

  // The platform package holds the addon, the main package none; the other
  // platforms' optional dependencies were skipped.
  const installed = readdirSync(join(app, 'node_modules')).filter((f) => !f.startsWith('.')).sort()
  assert.deepEqual(installed, ['stunfwd', platformName].sort(), `node_modules: ${installed}`)
  assert.ok(!readdirSync(join(app, 'node_modules', 'stunfwd')).some((f) => f.endsWith('.node')))
  const addon = join(app, 'node_modules', platformName, nodeFile)
  assert.ok(existsSync(addon))
  const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8'))
  const locked = Object.keys(lock.packages).filter(Boolean).sort()
  assert.deepEqual(locked, [`node_modules/${platformName}`, 'node_modules/stunfwd'].sort(), `lockfile: ${locked}`)
  const skipped = Object.keys(main.optionalDependencies).filter((name) => name !== platformName)
  t.diagnostic(`skipped optional dependencies: ${skipped.join(', ')}`)
  for (const name of skipped) assert.ok(!existsSync(join(app, 'node_modules', name)), `${name} is not installed`)

  writeFileSync(join(app, 'check.mjs'), CHECK)
  const result = await runNode(join(app, 'check.mjs'), [], { cwd: app, env, timeoutMs: 60000 })
  assert.equal(result.signal, null, `check.mjs exits by itself\n${result.stderr}`)
  assert.equal(result.code, 0, result.stderr)
  const out = JSON.parse(result.stdout.trim().split('\n').at(-1))
  t.diagnostic(`loaded ${out.addons.join(', ')} (process report: ${out.mapped.join(', ') || 'no shared objects listed'})`)
  assert.equal(out.reply, 'from the tarballs', 'the echo came back through the tunnel')
  assert.equal(out.version, PKG.version)
  assert.equal(out.resolved, join(app, 'node_modules', 'stunfwd', 'index.js'))
  assert.deepEqual(out.addons, [addon], 'the addon was loaded from the platform package')
  if (out.mapped.length > 0) assert.deepEqual(out.mapped, [addon], 'the only .node mapped into the process')
})

test('the main package alone installs offline, but has no addon to load', { timeout: 120000 }, async (t) => {
  const work = realpathSync(mkdtempSync(join(tmpdir(), 'stunfwd-pack-main-')))
  t.after(() => rmSync(work, { recursive: true, force: true }))
  const { main } = packageNode(work)
  const env = freshEnv(work)
  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true }))
  npm(['install', '--offline', main.tgz], app, env)
  const installed = readdirSync(join(app, 'node_modules')).filter((f) => !f.startsWith('.'))
  assert.deepEqual(installed, ['stunfwd'], 'every platform package skipped')

  writeFileSync(join(app, 'load.cjs'), `
try { require('stunfwd'); console.log('loaded') } catch (e) { console.log(e.message.split('.')[0]) }
`)
  const result = await runNode(join(app, 'load.cjs'), [], { cwd: app, env, timeoutMs: 30000 })
  assert.equal(result.code, 0, result.stderr)
  assert.equal(result.stdout.trim(), 'Cannot find native binding')
})
