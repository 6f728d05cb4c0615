// The Node event loop is never blocked: a 10 ms setInterval keeps its rate while
// engines connect, while waitConnected() waits and while stop() runs.
import assert from 'node:assert/strict'
import net from 'node:net'
import { test } from 'node:test'

import { Engine, config, rendezvous, room, tickRecorder } from './helpers.mjs'

const PERIOD = 10
// A blocked loop shows a gap as long as the blocking call (hundreds of ms here); a
// busy shared machine shows a few tens of ms at worst.
const MAX_GAP = 200
const MIN_RATE = 0.4

function assertTicking(t, what, window) {
  const expected = window.duration / PERIOD
  t.diagnostic(
    `${what}: ${window.duration.toFixed(0)} ms, ${window.ticks} ticks (${expected.toFixed(0)} nominal), longest gap ${window.maxGap.toFixed(1)} ms`,
  )
  assert.ok(window.maxGap < MAX_GAP, `${what}: the loop stalled for ${window.maxGap.toFixed(0)} ms`)
  assert.ok(window.ticks >= expected * MIN_RATE, `${what}: ${window.ticks} ticks, expected about ${expected.toFixed(0)}`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

test('the loop keeps ticking while engines connect and stop', { timeout: 60000 }, async (t) => {
  const signal = await rendezvous(t)
  const ticks = tickRecorder(PERIOD)
  t.after(() => ticks.stop())
  await sleep(50)

  const name = room()
  const connect0 = performance.now()
  const server = Engine.start(config(signal, 'server', name))
  t.after(() => server.stop())
  // The server engine discovers and waits in the room before its peer shows up.
  await sleep(300)
  const client = Engine.start(config(signal, 'client', name, { mappings: ['tcp:0:127.0.0.1:9'] }))
  t.after(() => client.stop())
  await Promise.all([client.waitConnected(20000), server.waitConnected(20000)])
  const connect1 = performance.now()

  const stop0 = performance.now()
  await Promise.all([client.stop(), server.stop()])
  const stop1 = performance.now()
  await sleep(20)

  assertTicking(t, 'connecting', ticks.window(connect0, connect1))
  assertTicking(t, 'stopping a connected pair', ticks.window(stop0, stop1))
})

test('the loop keeps ticking through a slow waitConnected() and a slow stop()', { timeout: 60000 }, async (t) => {
  const signal = await rendezvous(t)
  // A rendezvous that accepts connections and never answers: posting the offer hangs,
  // and stop() spends its budget on leaving the room.
  const sockets = new Set()
  const blackHole = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
  })
  await new Promise((resolve) => blackHole.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    for (const s of sockets) s.destroy()
    return new Promise((resolve) => blackHole.close(resolve))
  })
  const ticks = tickRecorder(PERIOD)
  t.after(() => ticks.stop())
  await sleep(50)

  const engine = Engine.start(
    config(signal, 'client', room(), { signalUrl: `http://127.0.0.1:${blackHole.address().port}/` }),
  )
  t.after(() => engine.stop())
  const wait0 = performance.now()
  await assert.rejects(engine.waitConnected(800), { code: 'ERR_TIMEOUT' })
  const wait1 = performance.now()

  const stop0 = performance.now()
  await engine.stop(3000)
  const stop1 = performance.now()
  await sleep(20)

  assert.ok(wait1 - wait0 >= 750, `waitConnected(800) took ${(wait1 - wait0).toFixed(0)} ms`)
  assert.ok(stop1 - stop0 >= 300, `stop() was expected to take a while here, took ${(stop1 - stop0).toFixed(0)} ms`)
  assertTicking(t, 'waitConnected(800) timing out', ticks.window(wait0, wait1))
  assertTicking(t, 'a slow stop()', ticks.window(stop0, stop1))
})
