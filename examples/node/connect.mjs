// The side that reaches in (client mode): joins the same room and opens local ports
// that lead to services next to the exposing peer.
//
//   node connect.mjs --room my-home-box --secret "$SECRET" \
//     --signal-url http://rendezvous.example.org:8080/ --stun rendezvous.example.org:3478 \
//     --map tcp:2222:22 --map udp:5353:10.0.0.1:53
//
// then `ssh -p 2222 localhost`. A local port of 0 picks a free port (printed). Ctrl-C
// stops.
import { parseArgs } from 'node:util'

import { Engine } from 'stunfwd'

const { values } = parseArgs({
  options: {
    room: { type: 'string' },
    secret: { type: 'string' },
    'signal-url': { type: 'string' },
    stun: { type: 'string', multiple: true, default: [] },
    map: { type: 'string', multiple: true, default: [] },
    bind: { type: 'string', default: '0.0.0.0:0' },
  },
})
if (!values.room || !values['signal-url'] || values.stun.length === 0 || values.map.length === 0) {
  console.error('usage: node connect.mjs --room ROOM --secret SECRET --signal-url URL --stun HOST:PORT --map tcp:LOCAL:REMOTE...')
  process.exit(2)
}

let engine
try {
  engine = Engine.start({
    mode: 'client',
    room: values.room,
    secret: values.secret,
    signalUrl: values['signal-url'],
    stunServers: values.stun,
    bind: values.bind,
  })
  engine.on('state', (s) => console.log(`state: ${s.text}`))
  engine.on('error', (e) => console.log(`error ${e.code}: ${e.message}`))
  engine.on('mapping', (m) => {
    if (m.action === 'added') console.log(`mapping ${m.id}: ${m.spec} listening on ${m.listen}`)
  })
  for (const spec of values.map) engine.addMapping(spec)
} catch (e) {
  // ERR_CONFIG names the key and what is valid; ERR_ADDR_IN_USE names the port.
  console.error(`${e.code}: ${e.message}`)
  await engine?.stop()
  process.exit(1)
}

async function shutdown() {
  await engine.stop()
  const t = engine.stats().totals
  console.log(`stopped; ${t.connectionsOpened} connections, ${t.bytesSent} bytes sent, ${t.bytesReceived} received`)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
