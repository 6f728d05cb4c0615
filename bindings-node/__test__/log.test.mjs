// setLogger: the library's log records reach a JavaScript function on the main thread.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'

import { Engine, FIXTURES, config, rendezvous, room, runNode, setLogger } from './helpers.mjs'

const LEVELS = ['error', 'warn', 'info', 'debug', 'trace']

/** Waits until `records` has one that `match` accepts. */
async function until(records, match, ms = 5000) {
  const deadline = performance.now() + ms
  while (!records.some(match)) {
    if (performance.now() > deadline) {
      throw new Error(`no such record among ${records.length}:\n${records.map((r) => r.message).join('\n')}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return records.find(match)
}

test('records arrive with level, target, message and fields, at the level asked for', async (t) => {
  const signal = await rendezvous(t)
  const records = []
  setLogger((record) => records.push(record), 'debug')
  t.after(() => setLogger(null))
  const engine = Engine.start(config(signal, 'client', room()))
  await until(records, (r) => r.message.includes('state=signaling'))
  await engine.stop()
  const stopped = await until(records, (r) => r.message.includes('state=stopped'))
  assert.equal(stopped.level, 'info')
  assert.match(stopped.target, /^stunfwd_core::/)
  assert.equal(typeof stopped.file, 'string')
  assert.equal(typeof stopped.line, 'number')
  for (const r of records) {
    assert.ok(LEVELS.indexOf(r.level) <= LEVELS.indexOf('debug'), `${r.level}: ${r.message}`)
    // Other crates (QUIC, TLS, HTTP) only from warnings up.
    if (!r.target.startsWith('stunfwd')) assert.ok(['error', 'warn'].includes(r.level), r.target)
  }
})

test('a level filters, and null stops the records', async (t) => {
  const signal = await rendezvous(t)
  const warnings = []
  setLogger((record) => warnings.push(record), 'warn')
  t.after(() => setLogger(null))
  // A server without a secret runs only with `insecure: true`, and warns about it.
  const { secret, ...open } = config(signal, 'server', room(), { insecure: true })
  assert.equal(typeof secret, 'string')
  const insecure = Engine.start(open)
  await until(warnings, (r) => /WITHOUT A SECRET/.test(r.message))
  await insecure.stop()
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.ok(warnings.every((r) => ['error', 'warn'].includes(r.level)), warnings.map((r) => r.level).join())

  setLogger(null)
  const seen = warnings.length
  const again = Engine.start(open)
  await again.stop()
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.equal(warnings.length, seen, 'records after setLogger(null)')
})

test('a logger does not keep the process alive', { timeout: 60000 }, async () => {
  const result = await runNode(join(FIXTURES, 'logger-then-exit.mjs'), [], { timeoutMs: 30000 })
  assert.equal(result.code, 0, result.stderr)
  assert.match(result.stdout, /^LOGGED \d+ records$/m)
})
