// The examples in examples/node run as documented, against this package: demo.mjs in
// one process, expose.mjs and connect.mjs as two processes with a TCP echo between them.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { PACKAGE_DIR, room, runNode, tcpEcho, tcpExchange } from './helpers.mjs'

const EXAMPLES = fileURLToPath(new URL('../../examples/node/', import.meta.url))

/** A copy of the examples whose `stunfwd` import resolves to this package, as after
 * `npm install` in examples/node, without touching the checkout. */
function examplesDir(t) {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'stunfwd-examples-')))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  for (const f of ['package.json', 'demo.mjs', 'expose.mjs', 'connect.mjs']) copyFileSync(join(EXAMPLES, f), join(dir, f))
  mkdirSync(join(dir, 'node_modules'))
  symlinkSync(PACKAGE_DIR, join(dir, 'node_modules', 'stunfwd'), 'dir')
  return dir
}

/** Starts `node file args`; `waitFor(re)` resolves with the first stdout match. */
function startNode(t, file, args, cwd) {
  const child = spawn(process.execPath, [file, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const waiters = []
  const check = () => {
    for (const w of [...waiters]) {
      const m = w.re.exec(stdout)
      if (m) {
        waiters.splice(waiters.indexOf(w), 1)
        clearTimeout(w.timer)
        w.resolve(m)
      }
    }
  }
  child.stdout.on('data', (d) => {
    stdout += d
    check()
  })
  child.stderr.on('data', (d) => {
    stderr += d
  })
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  t.after(() => child.exitCode === null && child.kill('SIGKILL'))
  return {
    child,
    exited,
    output: () => `stdout:\n${stdout}\nstderr:\n${stderr}`,
    waitFor(re, ms = 20000) {
      return new Promise((resolve, reject) => {
        const w = { re, resolve }
        w.timer = setTimeout(() => reject(new Error(`${file}: no ${re} within ${ms} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`)), ms)
        waiters.push(w)
        check()
      })
    },
  }
}

test('examples/node/demo.mjs checks itself and exits 0', { timeout: 60000 }, async (t) => {
  const dir = examplesDir(t)
  const result = await runNode(join(dir, 'demo.mjs'), ['--bytes', String(1024 * 1024)], { cwd: dir })
  assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`)
  assert.match(result.stdout, /tcp: 1048576 bytes there and back .*identical/)
  assert.match(result.stdout, /udp: .*identical/)
  assert.match(result.stdout, /^demo: OK$/m)
})

test('examples/node/expose.mjs and connect.mjs tunnel a TCP service', { timeout: 60000 }, async (t) => {
  const dir = examplesDir(t)
  const echo = await tcpEcho(t)
  const name = room()
  const expose = startNode(t, 'expose.mjs', ['--serve', '127.0.0.1:0', '--room', name, '--secret', 'ex', '--bind', '127.0.0.1:0'], dir)
  const [, url, stun] = await expose.waitFor(/rendezvous: (\S+) stun: (\S+)/)
  const connect = startNode(
    t,
    'connect.mjs',
    ['--room', name, '--secret', 'ex', '--signal-url', url, '--stun', stun, '--map', `tcp:0:127.0.0.1:${echo}`, '--bind', '127.0.0.1:0'],
    dir,
  )
  const [, port] = await connect.waitFor(/mapping 1: \S+ listening on 127\.0\.0\.1:(\d+)/)
  await connect.waitFor(/state: connected/)
  await expose.waitFor(/state: connected/)

  const data = Buffer.from('through two example processes')
  assert.ok((await tcpExchange(Number(port), data)).equals(data))

  connect.child.kill('SIGINT')
  assert.deepEqual(await connect.exited, { code: 0, signal: null }, connect.output())
  await connect.waitFor(/stopped; 1 connections/)
  expose.child.kill('SIGINT')
  assert.deepEqual(await expose.exited, { code: 0, signal: null }, expose.output())
  await expose.waitFor(/stopped; served 1 connections/)
})

test('examples/node/connect.mjs reports a bad mapping with its code', { timeout: 30000 }, async (t) => {
  const dir = examplesDir(t)
  const result = await runNode(
    join(dir, 'connect.mjs'),
    ['--room', room(), '--signal-url', 'http://127.0.0.1:9/', '--stun', '127.0.0.1:9', '--map', 'tcp:70000:22', '--bind', '127.0.0.1:0'],
    { cwd: dir },
  )
  assert.equal(result.code, 1)
  assert.match(result.stderr, /^ERR_CONFIG: invalid config `mapping`: tcp:70000:22/m)
})
