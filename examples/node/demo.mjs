// One process, checked end to end: a rendezvous + STUN server, a server peer and a
// client peer on loopback, a TCP echo and a UDP echo behind the server peer, reached
// through the tunnel. Prints each step with its timing and exits 0 only if every byte
// came back intact.
//
//   cd examples/node && npm install && node demo.mjs [--bytes N]
import { createHash, randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import net from 'node:net'
import { parseArgs } from 'node:util'

import { Engine, SignalServer } from 'stunfwd'

const { values } = parseArgs({ options: { bytes: { type: 'string', default: String(4 * 1024 * 1024) } } })
const BYTES = Number(values.bytes)
const t0 = performance.now()
const step = (text) => console.log(`[${((performance.now() - t0) / 1000).toFixed(3)}s] ${text}`)
const sha256 = (b) => createHash('sha256').update(b).digest('hex').slice(0, 16)

// Services on the "remote" side.
const tcpEcho = net.createServer((s) => {
  s.on('error', () => {})
  s.pipe(s)
})
await new Promise((resolve) => tcpEcho.listen(0, '127.0.0.1', resolve))
const udpEcho = dgram.createSocket('udp4')
udpEcho.on('message', (m, from) => udpEcho.send(m, from.port, from.address))
await new Promise((resolve) => udpEcho.bind(0, '127.0.0.1', resolve))
step(`services: tcp echo on ${tcpEcho.address().port}, udp echo on ${udpEcho.address().port}`)

const signal = await SignalServer.start({ http: '127.0.0.1:0', stun: '127.0.0.1:0' })
step(`rendezvous on ${signal.url}, STUN on ${signal.stunAddr}`)

const common = {
  room: `demo-${process.pid}`,
  secret: 'a long random string both sides share',
  signalUrl: signal.url,
  stunServers: [signal.stunAddr],
  bind: '127.0.0.1:0',
}
const server = Engine.start({ ...common, mode: 'server' })
const client = Engine.start({
  ...common,
  mode: 'client',
  mappings: [`tcp:0:127.0.0.1:${tcpEcho.address().port}`, `udp:0:127.0.0.1:${udpEcho.address().port}`],
})
client.on('state', (s) => step(`client: ${s.text}`))
server.on('state', (s) => step(`server: ${s.text}`))
client.on('error', (e) => step(`client error ${e.code}: ${e.message}`))

let ok = true
try {
  const state = await client.waitConnected(20000)
  await server.waitConnected(20000)
  step(`tunnel up: ${state.path} path to ${state.peer}`)
  const [tcpMap, udpMap] = client.mappings()

  const data = randomBytes(BYTES)
  const t1 = performance.now()
  const echoed = await new Promise((resolve, reject) => {
    const chunks = []
    let n = 0
    const socket = net.connect(tcpMap.port, '127.0.0.1', () => socket.end(data))
    socket.on('data', (c) => {
      chunks.push(c)
      n += c.length
      if (n >= data.length) {
        socket.destroy()
        resolve(Buffer.concat(chunks))
      }
    })
    socket.on('error', reject)
    socket.on('close', () => n < data.length && reject(new Error(`tcp: only ${n} of ${data.length} bytes came back`)))
  })
  const secs = (performance.now() - t1) / 1000
  const tcpOk = echoed.equals(data)
  ok &&= tcpOk
  step(`tcp: ${BYTES} bytes there and back in ${secs.toFixed(2)} s, sha256 ${sha256(data)} -> ${sha256(echoed)}: ${tcpOk ? 'identical' : 'DIFFERENT'}`)

  // Like any UDP client, resend until answered: a datagram may be dropped.
  const payload = Buffer.from('a datagram through the tunnel')
  const answer = await new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4')
    const send = () => s.send(payload, udpMap.port, '127.0.0.1')
    const resend = setInterval(send, 250)
    const timer = setTimeout(() => {
      clearInterval(resend)
      s.close()
      reject(new Error('udp: no answer within 5 s'))
    }, 5000)
    s.on('message', (m) => {
      clearInterval(resend)
      clearTimeout(timer)
      s.close()
      resolve(m)
    })
    send()
  })
  const udpOk = answer.equals(payload)
  ok &&= udpOk
  step(`udp: ${JSON.stringify(answer.toString())}: ${udpOk ? 'identical' : 'DIFFERENT'}`)

  const stats = client.stats()
  step(
    `client stats: rtt ${stats.rttMs?.toFixed(2)} ms, connected in ${stats.timings.timeToConnectedMs?.toFixed(0)} ms, ` +
      `${stats.totals.bytesSent} bytes sent, ${stats.totals.bytesReceived} received, ` +
      `${stats.totals.datagramsSent} datagrams sent, ${stats.totals.datagramsReceived} received`,
  )
} catch (e) {
  ok = false
  step(`FAILED: ${e.code ?? ''} ${e.message}`)
} finally {
  await Promise.all([client.stop(), server.stop()])
  await signal.stop()
  tcpEcho.close()
  udpEcho.close()
  step('stopped')
}
console.log(ok ? 'demo: OK' : 'demo: FAILED')
process.exitCode = ok ? 0 : 1
