// index.d.ts (generated from the Rust doc comments) and the runtime agree.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'

import { PACKAGE_DIR } from './helpers.mjs'
import * as esm from '../index.js'

const binding = esm.default
const dts = readFileSync(join(PACKAGE_DIR, 'index.d.ts'), 'utf8')

/** `export declare class Name { ... }` -> { Name: { statics, methods, getters } } */
function declaredClasses() {
  const classes = {}
  for (const [, name, body] of dts.matchAll(/export declare class (\w+) \{\n([\s\S]*?)\n\}/g)) {
    const members = { statics: [], methods: [], getters: [] }
    for (const line of body.split('\n')) {
      let m
      if ((m = /^ {2}static (\w+)[<(]/.exec(line))) members.statics.push(m[1])
      else if ((m = /^ {2}get (\w+)\(/.exec(line))) members.getters.push(m[1])
      else if ((m = /^ {2}(\w+)[<(]/.exec(line))) members.methods.push(m[1])
    }
    classes[name] = members
  }
  return classes
}

/** `export declare function name(` -> [name] */
function declaredFunctions() {
  return [...dts.matchAll(/^export declare function (\w+)\(/gm)].map((m) => m[1])
}

test('every class, function, method and getter in index.d.ts exists at runtime, and nothing else', () => {
  const classes = declaredClasses()
  assert.deepEqual(Object.keys(classes).sort(), ['Engine', 'SignalServer'])
  const functions = declaredFunctions()
  assert.deepEqual(functions, ['setLogger', 'version'])
  for (const f of functions) assert.equal(typeof binding[f], 'function', f)
  const exported = Object.keys(binding).filter((k) => !k.startsWith('__')).sort()
  assert.deepEqual(exported, [...Object.keys(classes), ...functions].sort())
  for (const [name, members] of Object.entries(classes)) {
    const cls = binding[name]
    assert.equal(typeof cls, 'function', name)
    for (const s of members.statics) assert.equal(typeof cls[s], 'function', `${name}.${s}`)
    const proto = Object.getOwnPropertyNames(cls.prototype).filter((p) => p !== 'constructor')
    for (const m of members.methods) assert.equal(typeof cls.prototype[m], 'function', `${name}#${m}`)
    for (const g of members.getters) {
      assert.equal(typeof Object.getOwnPropertyDescriptor(cls.prototype, g)?.get, 'function', `${name}#${g} getter`)
    }
    assert.deepEqual(proto.sort(), [...members.methods, ...members.getters].sort(), `${name} members`)
  }
})

test('ESM named imports work (CommonJS loader, detected exports)', () => {
  assert.equal(esm.Engine, binding.Engine)
  assert.equal(esm.SignalServer, binding.SignalServer)
  assert.equal(esm.setLogger, binding.setLogger)
  assert.equal(esm.version, binding.version)
})

test('Engine cannot be constructed with new', () => {
  assert.throws(() => new binding.Engine())
})
