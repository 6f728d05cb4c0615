// Once every engine and server is stopped, the process exits on its own: no dangling
// handles. Each case runs in a child process.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'

import { FIXTURES, runNode } from './helpers.mjs'

const EXIT_WITHIN = 2000

function lineAt(result, text) {
  const line = result.lines.find((l) => l.line === text)
  assert.ok(line, `the child printed ${text}; stdout:\n${result.stdout}\nstderr:\n${result.stderr}`)
  return line.at
}

test('the process exits on its own within 2 s once everything is stopped', { timeout: 60000 }, async (t) => {
  const result = await runNode(join(FIXTURES, 'stop-then-exit.mjs'), [], { timeoutMs: 30000 })
  assert.equal(result.code, 0, result.stderr)
  const after = result.exitedAt - lineAt(result, 'STOPPED')
  t.diagnostic(`exited ${after.toFixed(0)} ms after the last stop() resolved`)
  assert.ok(after < EXIT_WITHIN, `exited ${after.toFixed(0)} ms after stopping`)
})

test('a running engine keeps the process alive (the control case)', { timeout: 60000 }, async () => {
  const child = runNode(join(FIXTURES, 'running-engine.mjs'), [], { timeoutMs: 3000 })
  await assert.rejects(child, /did not exit within 3000 ms[\s\S]*RUNNING/)
})

test('a listener that throws is an uncaught exception', { timeout: 60000 }, async () => {
  const result = await runNode(join(FIXTURES, 'throwing-listener.mjs'), [], { timeoutMs: 30000 })
  assert.equal(result.code, 0, result.stderr)
  assert.match(result.stdout, /^CAUGHT boom from a listener$/m)
})

test('a garbage-collected engine is stopped and lets the process exit', { timeout: 60000 }, async (t) => {
  const result = await runNode('--expose-gc', [join(FIXTURES, 'forgotten-engine.mjs')], { timeoutMs: 30000 })
  assert.equal(result.code, 0, result.stderr)
  const after = result.exitedAt - lineAt(result, 'COLLECTED')
  t.diagnostic(`exited ${after.toFixed(0)} ms after the engine was collected`)
  assert.ok(after < 5000)
})
