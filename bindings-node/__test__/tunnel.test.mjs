// End to end on loopback: a rendezvous server, a server engine and a client engine in
// this process, traffic through the tunnel to services on 127.0.0.1.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { test } from 'node:test'

import { pair, rendezvous, tcpEcho, tcpExchange, udpEcho, udpExchange } from './helpers.mjs'

const MB = 1024 * 1024
const sha256 = (buf) => createHash('sha256').update(buf).digest('hex')

/** A TCP service that sends `reply` while reading everything the peer sends; resolves
 * `received` with what it read. */
async function duplexService(t, reply) {
  let resolveReceived
  const received = new Promise((resolve) => {
    resolveReceived = resolve
  })
  const server = net.createServer((socket) => {
    const chunks = []
    socket.on('data', (c) => chunks.push(c))
    socket.on('end', () => resolveReceived(Buffer.concat(chunks)))
    socket.on('error', () => {})
    socket.end(reply)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => server.close(resolve)))
  return { port: server.address().port, received }
}

test('TCP: 10 MB each way arrive identical', { timeout: 120000 }, async (t) => {
  const signal = await rendezvous(t)
  const up = randomBytes(10 * MB)
  const down = randomBytes(10 * MB)
  const service = await duplexService(t, down)
  const { client, server } = await pair(t, signal, [`tcp:0:127.0.0.1:${service.port}`])
  const [mapping] = client.mappings()

  const t0 = performance.now()
  const [gotDown, gotUp] = await Promise.all([
    tcpExchange(mapping.port, up, down.length),
    service.received,
  ])
  const seconds = (performance.now() - t0) / 1000
  t.diagnostic(`20 MB through the tunnel in ${seconds.toFixed(2)} s`)

  assert.equal(gotUp.length, up.length, 'bytes that reached the service')
  assert.equal(sha256(gotUp), sha256(up), 'client -> service bytes identical')
  assert.equal(gotDown.length, down.length, 'bytes that reached the client')
  assert.equal(sha256(gotDown), sha256(down), 'service -> client bytes identical')

  const traffic = client.stats().mappings[0].traffic
  assert.ok(traffic.bytesSent >= up.length, `client stats count ${traffic.bytesSent} bytes sent`)
  assert.ok(traffic.bytesReceived >= down.length, `client stats count ${traffic.bytesReceived} bytes received`)
  assert.equal(traffic.connectionsOpened, 1)
  assert.ok(server.stats().totals.bytesReceived >= up.length)
})

test('TCP: an echo round trip through a mapping added after connecting', async (t) => {
  const signal = await rendezvous(t)
  const echo = await tcpEcho(t)
  const { client } = await pair(t, signal)
  const id = client.addMapping(`tcp:0:127.0.0.1:${echo}`)
  const mapping = client.mappings().find((m) => m.id === id)
  const data = randomBytes(64 * 1024)
  const got = await tcpExchange(mapping.port, data)
  assert.ok(got.equals(data))
})

test('UDP: a datagram round-trips', async (t) => {
  const signal = await rendezvous(t)
  const echo = await udpEcho(t)
  const { client } = await pair(t, signal, [`udp:0:127.0.0.1:${echo}`])
  const [mapping] = client.mappings()
  assert.equal(mapping.proto, 'udp')
  const payload = Buffer.from(`hello over udp ${Date.now()}`)
  // Resent every 250 ms until answered, as UDP clients do: the core acknowledges a new
  // flow before registering it (core/src/forward/udp.rs `serve_flow`), so the flow's
  // first datagram is sometimes dropped.
  const { answer, sent } = await udpExchange(mapping.port, payload)
  t.diagnostic(`answered after ${sent} datagram(s)`)
  assert.ok(answer.equals(payload), `got ${answer}`)
  const traffic = client.stats().mappings[0].traffic
  assert.ok(traffic.datagramsSent >= 1 && traffic.datagramsReceived >= 1)
})

test('stats is a plain object with the connection details', async (t) => {
  const signal = await rendezvous(t)
  const { client, server } = await pair(t, signal)
  const stats = client.stats()
  assert.equal(Object.getPrototypeOf(stats), Object.prototype)
  assert.equal(stats.mode, 'client')
  assert.equal(stats.state.state, 'connected')
  assert.equal(stats.path, 'lan')
  // Each client has a socket of its own on the server (its session's).
  const session = server.stats().clients.find((c) => c.id === stats.clientId)
  assert.equal(stats.peerAddr, session.localAddr)
  assert.equal(stats.localAddr, client.localAddr)
  assert.equal(typeof stats.rttMs, 'number')
  assert.equal(typeof stats.timings.timeToConnectedMs, 'number')
  assert.ok(stats.signalingRequests > 0)
  assert.equal(stats.lastError, null)
  assert.deepEqual(JSON.parse(JSON.stringify(stats)), stats)
  assert.equal(client.state, 'connected')
})
