// Events (EventEmitter style and the start callback) and the engine's life cycle.
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import { readdirSync, readFileSync } from 'node:fs'
import net from 'node:net'
import { test } from 'node:test'

import { Engine, config, forgeOffer, pair, rendezvous, room } from './helpers.mjs'

const threads = () => Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
const fds = () => readdirSync('/proc/self/fd').length

test('state events arrive in order, through on() and the start callback', async (t) => {
  const signal = await rendezvous(t)
  const name = room()
  const seen = { server: [], client: [], callback: [] }
  const server = Engine.start(config(signal, 'server', name))
  server.on('state', (s) => seen.server.push(s.state))
  const client = Engine.start(config(signal, 'client', name), (event) => seen.callback.push(event))
  client.on('state', (s) => seen.client.push(s.state))

  const connected = await client.waitConnected(20000)
  assert.equal(connected.state, 'connected')
  assert.equal(connected.path, 'lan')
  assert.match(connected.peer, /^127\.0\.0\.1:\d+$/)
  await server.waitConnected(20000)
  await Promise.all([client.stop(), server.stop()])

  // Listeners added right after start() see the first state change.
  // A server waits for clients (signaling) and follows its client's tunnel from there.
  for (const [states, first] of [[seen.client, 'discovering'], [seen.server, 'signaling']]) {
    assert.equal(states[0], first, `first state of ${states}`)
    for (const s of ['signaling', 'punching', 'connected']) assert.ok(states.includes(s), `${s} in ${states}`)
    assert.ok(!states.includes('discovering') || first === 'discovering', `${states}`)
    // stop() resolves after the last event was delivered.
    assert.equal(states.at(-1), 'stopped', `last state of ${states}`)
  }
  const callbackStates = seen.callback.filter((e) => e.type === 'state').map((e) => e.state.state)
  assert.deepEqual(callbackStates, seen.client)
  const first = seen.callback[0]
  assert.equal(first.type, 'state')
  assert.equal(typeof first.state.text, 'string')
})

test('mapping events carry the id, spec and real port', async (t) => {
  const signal = await rendezvous(t)
  const events = []
  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  client.on('mapping', (m) => events.push(m))
  const id = client.addMapping('tcp:0:127.0.0.1:22')
  assert.equal(typeof id, 'number')
  const [info] = client.mappings()
  assert.deepEqual(
    { id: info.id, proto: info.proto, target: info.target },
    { id, proto: 'tcp', target: '127.0.0.1:22' },
  )
  assert.ok(info.port > 0)
  client.removeMapping(id)
  assert.deepEqual(client.mappings(), [])
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual(events, [
    { action: 'added', id, spec: 'tcp:127.0.0.1:0:127.0.0.1:22', listen: info.listen, port: info.port },
    { action: 'removed', id },
  ])
})

test("'error' events: a rejected peer offer is ERR_PEER_AUTH", async (t) => {
  const signal = await rendezvous(t)
  const name = room()
  const server = Engine.start(config(signal, 'server', name, { secret: 'one' }))
  t.after(() => server.stop())
  const gotError = new Promise((resolve) => server.once('error', resolve))
  await forgeOffer(signal, name, 'one', 'client')
  const error = await gotError
  assert.ok(error instanceof Error)
  assert.equal(error.code, 'ERR_PEER_AUTH')
  assert.match(error.message, /authentication/)
  assert.ok(server.stats().offersRejected >= 1)
})

test('once() fires once, off() removes, on() chains', async (t) => {
  const signal = await rendezvous(t)
  const client = Engine.start(config(signal, 'client', room()))
  t.after(() => client.stop())
  const calls = { on: 0, once: 0, off: 0 }
  const offListener = () => {
    calls.off += 1
  }
  const returned = client
    .on('mapping', () => {
      calls.on += 1
    })
    .once('mapping', () => {
      calls.once += 1
    })
    .on('mapping', offListener)
  assert.equal(returned, client)
  assert.equal(client.off('mapping', offListener), client)
  client.removeMapping(client.addMapping('tcp:0:9'))
  client.removeMapping(client.addMapping('tcp:0:9'))
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual(calls, { on: 4, once: 1, off: 0 })
})

test('20 start/stop cycles leave no threads or sockets behind', { timeout: 120000 }, async (t) => {
  const signal = await rendezvous(t)
  // One warm-up cycle: the first one loads the addon and starts lazy pools.
  const warm = await pair({ after: () => {} }, signal)
  await Promise.all([warm.client.stop(), warm.server.stop()])
  const before = { threads: threads(), fds: fds() }
  const t0 = performance.now()
  for (let i = 0; i < 20; i++) {
    const cycle = await pair({ after: () => {} }, signal)
    assert.equal(cycle.client.state, 'connected', `cycle ${i}`)
    await Promise.all([cycle.client.stop(), cycle.server.stop()])
    assert.equal(cycle.client.state, 'stopped')
    assert.equal(cycle.server.state, 'stopped')
  }
  t.diagnostic(`20 connect + stop cycles in ${((performance.now() - t0) / 1000).toFixed(2)} s`)
  // Helper threads end right after settling their promise; give them a moment.
  let after
  for (let i = 0; i < 50; i++) {
    after = { threads: threads(), fds: fds() }
    if (after.threads <= before.threads && after.fds <= before.fds) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  assert.ok(after.threads <= before.threads, `threads ${before.threads} -> ${after.threads}`)
  assert.ok(after.fds <= before.fds, `fds ${before.fds} -> ${after.fds}`)
})

test('stop() is idempotent and every call resolves after the engine stopped', async (t) => {
  const signal = await rendezvous(t)
  const { client } = await pair(t, signal)
  const first = client.stop()
  const second = client.stop()
  await Promise.all([first, second])
  assert.equal(client.state, 'stopped')
  await client.stop()
})

test('stop() releases the tunnel socket and the mapping ports at once', async (t) => {
  const signal = await rendezvous(t)
  const { client } = await pair(t, signal, ['tcp:0:127.0.0.1:9'])
  const udpPort = Number(client.localAddr.split(':').at(-1))
  const [mapping] = client.mappings()
  await client.stop()
  const statsAfter = client.stats()
  assert.equal(statsAfter.state.state, 'stopped')
  assert.deepEqual(client.mappings(), [])

  const udp = dgram.createSocket('udp4')
  await new Promise((resolve, reject) => {
    udp.once('error', reject)
    udp.bind(udpPort, '127.0.0.1', resolve)
  })
  await new Promise((resolve) => udp.close(resolve))
  const tcp = net.createServer()
  await new Promise((resolve, reject) => {
    tcp.once('error', reject)
    tcp.listen(mapping.port, '127.0.0.1', resolve)
  })
  await new Promise((resolve) => tcp.close(resolve))
})

test("'client' events and stats().clients: a server names each of its clients", async (t) => {
  const signal = await rendezvous(t)
  const name = room()
  const server = Engine.start(config(signal, 'server', name))
  t.after(() => server.stop())
  const seen = []
  server.on('client', (c) => seen.push(c))
  const clients = [Engine.start(config(signal, 'client', name)), Engine.start(config(signal, 'client', name))]
  t.after(() => Promise.all(clients.map((c) => c.stop())))
  await Promise.all(clients.map((c) => c.waitConnected(20000)))
  const ids = clients.map((c) => c.stats().clientId).sort()
  for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/)
  // Stats are read synchronously, but events reach JavaScript through the
  // event loop, so a client can show as connected in stats a moment before
  // its 'client' event is delivered: wait for both, each bounded.
  const connectedInStats = () => server.stats().clients.filter((c) => c.state.state === 'connected').length
  const connectedInEvents = () => [...new Set(seen.filter((c) => c.state.state === 'connected').map((c) => c.id))].sort()
  const deadline = Date.now() + 10000
  while ((connectedInStats() < 2 || connectedInEvents().length < 2) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const stats = server.stats()
  assert.deepEqual(stats.clients.map((c) => c.id).sort(), ids)
  assert.equal(stats.clientId, null)
  for (const c of stats.clients) {
    assert.equal(c.state.state, 'connected')
    assert.match(c.localAddr, /^127\.0\.0\.1:\d+$/)
  }
  assert.deepEqual(connectedInEvents(), ids)
})
