// One version everywhere: the Cargo workspace's (`[workspace.package] version` in the
// root Cargo.toml) is the main package's, each platform package's (npm/<platform>/), the
// lockfile's, the one the generated loader checks a
// platform package against, and the one the addon reports (`version()`).
import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'

import { parseTriple } from '@napi-rs/cli'

import { PACKAGE_DIR } from './helpers.mjs'
import { version as addonVersion } from '../index.js'

const read = (...path) => readFileSync(join(PACKAGE_DIR, ...path), 'utf8')
const json = (...path) => JSON.parse(read(...path))

/** `version` of the `[workspace.package]` table of the root Cargo.toml. */
function workspaceVersion() {
  const toml = read('..', 'Cargo.toml')
  const table = /^\[workspace\.package\][ \t]*\r?\n([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(toml)
  assert.ok(table, 'Cargo.toml has a [workspace.package] table')
  const version = /^version\s*=\s*"([^"]+)"/m.exec(table[1])
  assert.ok(version, '[workspace.package] has a version')
  return version[1]
}

const VERSION = workspaceVersion()
const PKG = json('package.json')
const PLATFORMS = PKG.napi.targets.map((triple) => parseTriple(triple).platformArchABI)

test(`the Cargo workspace version (${VERSION}) is the addon crate's`, () => {
  assert.match(VERSION, /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/)
  assert.match(read('Cargo.toml'), /^version\.workspace\s*=\s*true$/m, 'bindings-node/Cargo.toml takes the workspace version')
})

test('package.json and package-lock.json carry it', () => {
  assert.equal(PKG.version, VERSION, 'package.json version')
  const lock = json('package-lock.json')
  assert.equal(lock.version, VERSION, 'package-lock.json version')
  assert.equal(lock.packages[''].version, VERSION, 'package-lock.json packages[""].version')
})

test('one platform package per napi.targets entry, each at the version', () => {
  const dirs = readdirSync(join(PACKAGE_DIR, 'npm'), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)
  assert.deepEqual(dirs.sort(), [...PLATFORMS].sort(), 'npm/ holds exactly the napi.targets platforms')
  for (const platform of PLATFORMS) {
    const pkg = json('npm', platform, 'package.json')
    const addon = `${PKG.napi.binaryName}.${platform}.node`
    assert.equal(pkg.name, `${PKG.name}-${platform}`)
    assert.equal(pkg.version, VERSION, `npm/${platform}/package.json version`)
    assert.equal(pkg.main, addon)
    assert.deepEqual(pkg.files, [addon])
    assert.equal(pkg.license, PKG.license)
    assert.deepEqual(pkg.engines, PKG.engines)
    assert.ok(existsSync(join(PACKAGE_DIR, 'npm', platform, 'README.md')), `npm/${platform}/README.md`)
  }
})

test('the committed package.json names no platform package: scripts/package-node adds them at the version', () => {
  // A release writes optionalDependencies (napi prepublish; scripts/package-node here,
  // whose output __test__/pack.test.mjs checks). Listed in the checkout, they would make
  // every `npm ci` ask the registry for names that are not published yet, which anyone
  // could register.
  assert.equal(PKG.optionalDependencies, undefined, 'package.json optionalDependencies')
  const lock = json('package-lock.json')
  assert.equal(lock.packages[''].optionalDependencies, undefined, 'package-lock.json optionalDependencies')
  const platformEntries = Object.keys(lock.packages).filter((k) => k.startsWith(`node_modules/${PKG.name}-`))
  assert.deepEqual(platformEntries, [], 'no platform package in package-lock.json')
})

test('the generated loader checks platform packages against the version', () => {
  const expected = [...read('index.js').matchAll(/bindingPackageVersion !== '([^']+)'/g)].map((m) => m[1])
  assert.ok(expected.length >= PLATFORMS.length, 'index.js checks the platform packages')
  assert.deepEqual([...new Set(expected)], [VERSION], 'run `npm run build` after changing the version')
})

test('the addon reports the version: version()', () => {
  assert.equal(typeof addonVersion, 'function')
  assert.equal(addonVersion(), VERSION)
})
