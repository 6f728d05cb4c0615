// Every failure is an Error with a stable `code` and a message that says what to do.
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import { getEventListeners } from 'node:events'
import net from 'node:net'
import { test } from 'node:test'

import { Engine, SignalServer, config, forgeOffer, rendezvous, room, setLogger } from './helpers.mjs'

/** Asserts that `fn` throws an Error with `code` whose message matches `message`. */
function throwsCode(fn, code, message) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof Error, `${e} is an Error`)
    assert.equal(e.code, code, `code of: ${e.message}`)
    if (message) assert.match(e.message, message)
    return true
  })
}

async function rejectsCode(promise, code, message) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof Error, `${e} is an Error`)
    assert.equal(e.code, code, `code of: ${e.message}`)
    if (message) assert.match(e.message, message)
    return true
  })
}

async function listeningTcp(t) {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => server.close(resolve)))
  return server.address().port
}

test('ERR_CONFIG names the key, the value and what is valid', async (t) => {
  const signal = await rendezvous(t)
  throwsCode(() => Engine.start(config(signal, 'sideways', room())), 'ERR_CONFIG', /`mode`: sideways.*valid: "client" or "server"/)
  throwsCode(() => Engine.start({ ...config(signal, 'client', room()), colour: 'red' }), 'ERR_CONFIG', /colour/)
  throwsCode(() => Engine.start({ ...config(signal, 'client', room()), mappings: ['tcp:99999:22'] }), 'ERR_CONFIG', /mappings\[0\].*99999/)
  throwsCode(() => Engine.start('{"mode": "client",'), 'ERR_CONFIG', /not valid JSON/)
  throwsCode(() => Engine.start('[1, 2]'), 'ERR_CONFIG', /not an object/)
  throwsCode(() => Engine.start({ mode: 'client' }), 'ERR_CONFIG', /room/)
  // No open door by default: a server without a secret names `secret` and the opt-out.
  const { secret, ...open } = config(signal, 'server', room())
  assert.equal(typeof secret, 'string')
  throwsCode(() => Engine.start(open), 'ERR_CONFIG', /`secret`.*"insecure": true/)
  const warnings = []
  const insecure = Engine.start({ ...open, insecure: true }, (e) => { if (e.type === 'warning') warnings.push(e.warning) })
  t.after(() => insecure.stop())
  assert.equal(insecure.stats().insecure, true)
  await new Promise((resolve) => setTimeout(resolve, 200))
  assert.equal(warnings.length, 1)
  assert.match(warnings[0], /WITHOUT A SECRET/)

  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  throwsCode(() => client.addMapping('tcp:nope'), 'ERR_CONFIG', /mapping.*valid: tcp:LOCAL:REMOTE/)
  const server = Engine.start(config(signal, 'server', room()))
  t.after(() => server.stop())
  throwsCode(() => server.addMapping('tcp:0:22'), 'ERR_CONFIG', /server mode/)

  await rejectsCode(SignalServer.start({ http: 'localhost-ish' }), 'ERR_CONFIG', /`http`: localhost-ish.*IP:PORT/)
})

test('ERR_ADDR_IN_USE names the port', async (t) => {
  const signal = await rendezvous(t)
  const busy = await listeningTcp(t)
  const portText = new RegExp(`port ${busy}`)
  throwsCode(
    () => Engine.start(config(signal, 'client', room(), { mappings: [`tcp:${busy}:127.0.0.1:9`] })),
    'ERR_ADDR_IN_USE',
    portText,
  )
  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  throwsCode(() => client.addMapping(`tcp:${busy}:127.0.0.1:9`), 'ERR_ADDR_IN_USE', portText)

  const udp = dgram.createSocket('udp4')
  await new Promise((resolve) => udp.bind(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => udp.close(resolve)))
  const udpPort = udp.address().port
  throwsCode(
    () => Engine.start(config(signal, 'client', room(), { bind: `127.0.0.1:${udpPort}` })),
    'ERR_ADDR_IN_USE',
    new RegExp(`port ${udpPort}`),
  )

  await rejectsCode(SignalServer.start({ http: `127.0.0.1:${busy}` }), 'ERR_ADDR_IN_USE', portText)
})

test('ERR_INVALID_ARG for JavaScript values of the wrong kind', async (t) => {
  const signal = await rendezvous(t)
  throwsCode(() => Engine.start(42), 'ERR_INVALID_ARG', /`config` must be an object or a JSON string, got a number/)
  throwsCode(() => Engine.start(), 'ERR_INVALID_ARG', /got undefined/)
  throwsCode(() => Engine.start({ big: 1n }), 'ERR_INVALID_ARG', /cannot be converted to JSON/)
  throwsCode(() => Engine.start(config(signal, 'client', room()), 'not a function'), 'ERR_INVALID_ARG', /`onEvent` must be a function/)

  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  throwsCode(() => client.addMapping(8080), 'ERR_INVALID_ARG', /`spec`.*must be a string, got a number/)
  throwsCode(() => client.removeMapping('1'), 'ERR_INVALID_ARG', /`id`.*must be a number/)
  throwsCode(() => client.removeMapping(1.5), 'ERR_INVALID_ARG', /integer/)
  throwsCode(() => client.on('connected', () => {}), 'ERR_INVALID_ARG', /unknown event "connected"; valid: 'state', 'mapping', 'error'/)
  throwsCode(() => client.on('state'), 'ERR_INVALID_ARG', /`listener` must be a function/)
  // Promise-returning calls reject (never throw), like Node's own promise APIs.
  await rejectsCode(client.waitConnected(-5), 'ERR_INVALID_ARG', /`timeoutMs` must be a finite number of milliseconds >= 0, got -5/)
  await rejectsCode(client.stop('soon'), 'ERR_INVALID_ARG', /`timeoutMs` must be a number/)
  await rejectsCode(SignalServer.start('127.0.0.1:0'), 'ERR_INVALID_ARG', /`options` must be an object/)
  await rejectsCode(SignalServer.start({ http: 8080 }), 'ERR_INVALID_ARG', /`http` must be a string/)
  await rejectsCode(client.waitConnected(10, 'soon'), 'ERR_INVALID_ARG', /`options` must be an object/)
  await rejectsCode(client.waitConnected(10, { signal: 'soon' }), 'ERR_INVALID_ARG', /`options.signal` must be an AbortSignal/)
  throwsCode(() => setLogger(42), 'ERR_INVALID_ARG', /`logger` must be a function, got a number/)
  throwsCode(() => setLogger(() => {}, 'loud'), 'ERR_INVALID_ARG', /unknown log level "loud"/)
})

test('ERR_CANCELLED when the AbortSignal of waitConnected aborts; the engine runs on', async (t) => {
  const signal = await rendezvous(t)
  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  const controller = new AbortController()
  const started = performance.now()
  setTimeout(() => controller.abort(), 100)
  await rejectsCode(client.waitConnected(20000, { signal: controller.signal }), 'ERR_CANCELLED', /cancelled/)
  const took = performance.now() - started
  assert.ok(took < 2000, `the abort took ${took.toFixed(0)} ms to end the wait`)
  await rejectsCode(client.waitConnected(20000, { signal: AbortSignal.abort() }), 'ERR_CANCELLED')
  assert.equal(client.state, 'signaling')
  await rejectsCode(client.waitConnected(50), 'ERR_TIMEOUT')
  // A signal used for many waits keeps no listener from those that ended.
  const reused = new AbortController()
  for (let i = 0; i < 12; i++) {
    await rejectsCode(client.waitConnected(10, { signal: reused.signal }), 'ERR_TIMEOUT')
  }
  assert.equal(getEventListeners(reused.signal, 'abort').length, 0)
})

test('ERR_NO_SUCH_MAPPING, ERR_TIMEOUT, ERR_STOPPED', async (t) => {
  const signal = await rendezvous(t)
  const client = Engine.start(config(signal, 'client', room()))
  throwsCode(() => client.removeMapping(999), 'ERR_NO_SUCH_MAPPING', /999/)
  await rejectsCode(client.waitConnected(200), 'ERR_TIMEOUT', /not connected after 200ms; state: signaling/)

  const pending = rejectsCode(client.waitConnected(20000), 'ERR_STOPPED', /stopped/)
  await client.stop()
  await pending
  await rejectsCode(client.waitConnected(1000), 'ERR_STOPPED')
  throwsCode(() => client.addMapping('tcp:0:22'), 'ERR_STOPPED', /stopped/)
  throwsCode(() => client.removeMapping(1), 'ERR_STOPPED', /stopped/)
  assert.equal(client.state, 'stopped')
  // The final figures stay readable.
  const stats = client.stats()
  assert.equal(stats.state.state, 'stopped')
  assert.ok(stats.signalingRequests > 0)
})

test('ERR_TIMEOUT naming the secret when the secrets differ', async (t) => {
  // Peers with different secrets meet in different mailboxes and never see each other.
  const signal = await rendezvous(t)
  const name = room()
  const server = Engine.start(config(signal, 'server', name, { secret: 'right' }))
  t.after(() => server.stop())
  const client = Engine.start(config(signal, 'client', name, { secret: 'wrong' }))
  t.after(() => client.stop())
  await rejectsCode(server.waitConnected(2000), 'ERR_TIMEOUT', /secret/)
})

test('ERR_PEER_AUTH when the rendezvous forges an offer', async (t) => {
  const signal = await rendezvous(t)
  const name = room()
  const server = Engine.start(config(signal, 'server', name, { secret: 'right' }))
  t.after(() => server.stop())
  await forgeOffer(signal, name, 'right', 'client')
  await rejectsCode(server.waitConnected(3000), 'ERR_PEER_AUTH', /authentication/)
  assert.equal(server.state, 'signaling')
})

test('errors thrown synchronously have a stack', () => {
  try {
    Engine.start(42)
    assert.fail('start(42) did not throw')
  } catch (e) {
    assert.equal(typeof e.stack, 'string')
    assert.equal(e.name, 'Error')
  }
})
