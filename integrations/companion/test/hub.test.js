// The module's logic against the demo hub (a real hub with simulated
// devices, started here); Companion's side is played by a host that
// records what the module gives it. Run with `node --test test/`.

'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { HubLink, variableId } = require('../src/hub')

const BIN = process.env.PATCHBAY_BIN_DIR || path.join(__dirname, '..', '..', '..', 'target', 'debug')
const WAIT_MS = 20000

/** The demo hub, and its console URL. */
async function demo() {
	const child = spawn(path.join(BIN, 'patchbay-agent'), ['demo', '--hub-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], {
		stdio: ['ignore', 'pipe', 'inherit'],
		env: { ...process.env, RUST_LOG: 'warn' },
	})
	const lines = readline.createInterface({ input: child.stdout })
	const url = await new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error('the demo printed no console URL')), WAIT_MS)
		lines.on('line', (line) => {
			const m = line.match(/(http:\/\/\S+)/)
			if (m) {
				clearTimeout(timer)
				resolve(new URL(m[1]))
			}
		})
	})
	return { child, url }
}

/** What Companion would hold: definitions, variable values, statuses. */
function recordingHost() {
	const host = {
		statuses: [],
		actions: null,
		feedbacks: null,
		variables: null,
		presets: null,
		values: {},
		checks: 0,
		logs: [],
		setActionDefinitions: (d) => (host.actions = d),
		setFeedbackDefinitions: (d) => (host.feedbacks = d),
		setVariableDefinitions: (d) => (host.variables = d),
		setPresetDefinitions: (d) => (host.presets = d),
		setVariableValues: (v) => Object.assign(host.values, v),
		checkFeedbacks: () => host.checks++,
		updateStatus: (s, m) => host.statuses.push([s, m]),
		log: (level, m) => host.logs.push([level, m]),
	}
	return host
}

async function until(what, ok) {
	const deadline = Date.now() + WAIT_MS
	while (!ok()) {
		if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
		await new Promise((r) => setTimeout(r, 20))
	}
}

/** Evaluates a feedback as Companion would. */
function feedback(host, id, options) {
	return host.feedbacks[id].callback({ options })
}

test('definitions, variables and feedbacks follow the hub and a real state change', async () => {
	const { child, url } = await demo()
	const host = recordingHost()
	const link = new HubLink(host, { host: url.hostname, port: Number(url.port), token: '' })
	try {
		link.start()
		await until('the status ok', () => host.statuses.some(([s]) => s === 'ok'))
		assert.equal(host.statuses[0][0], 'connecting')

		// Definitions from the devices' schemas.
		const set = host.actions.set
		const devices = set.options.find((o) => o.id === 'device').choices.map((c) => c.id)
		assert.ok(devices.includes('proj-1') && devices.includes('display-1'), devices.join(','))
		const settings = set.options.find((o) => o.id === 'setting').choices.map((c) => c.id)
		assert.ok(settings.includes('power') && settings.includes('input'), settings.join(','))
		assert.deepEqual(Object.keys(host.feedbacks).sort(), ['command_failed', 'device_online', 'setting_equals'])
		const ids = host.variables.map((v) => v.variableId)
		assert.ok(ids.includes('proj_1_power') && ids.includes('proj_1_online'), ids.join(','))
		assert.ok(host.presets['proj-1_power_on'], Object.keys(host.presets).join(','))
		assert.ok(host.presets['proj-1_input_hdmi2'], Object.keys(host.presets).join(','))
		assert.deepEqual(host.presets['proj-1_power_on'].steps[0].down[0], {
			actionId: 'set',
			options: { device: 'proj-1', setting: 'power', value: 'on' },
		})

		// The demo's projectors start off; online.
		await until('proj-1 online', () => host.values[variableId('proj-1', 'online')] === 'yes')
		assert.equal(host.values.proj_1_power, 'off')
		assert.equal(feedback(host, 'device_online', { device: 'proj-1' }), true)
		assert.equal(feedback(host, 'setting_equals', { device: 'proj-1', setting: 'power', value: 'on' }), false)

		// A command while off fails (the projector refuses inputs in standby).
		const refused = await set.callback({ options: { device: 'proj-1', setting: 'input', value: 'hdmi2' } })
		assert.ok(refused, 'the command failed')
		assert.equal(feedback(host, 'command_failed', { device: 'proj-1' }), true)

		// Power on: the feedback and the variable follow the real state change.
		const checksBefore = host.checks
		const error = await set.callback({ options: { device: 'proj-1', setting: 'power', value: 'on' } })
		assert.equal(error, null)
		assert.equal(feedback(host, 'command_failed', { device: 'proj-1' }), false)
		await until('proj-1 warming or on', () => ['warming', 'on'].includes(host.values.proj_1_power))
		assert.ok(host.checks > checksBefore, 'feedbacks were checked again')
		assert.equal(feedback(host, 'setting_equals', { device: 'proj-1', setting: 'power', value: 'on' }), true)
	} finally {
		link.stop()
		child.kill()
	}
})

test('a missing host is a bad configuration and a dead hub a connection failure', async () => {
	const host = recordingHost()
	new HubLink(host, { host: '', port: 8080 }).start()
	assert.equal(host.statuses[0][0], 'bad_config')

	const failing = recordingHost()
	const link = new HubLink(failing, { host: '127.0.0.1', port: 9 })
	link.start()
	await until('a connection failure', () => failing.statuses.some(([s]) => s === 'connection_failure'))
	link.stop()
})

test('the event stream resumes where it left off after the hub drops it', async () => {
	const { child, url } = await demo()
	const host = recordingHost()
	const link = new HubLink(host, { host: url.hostname, port: Number(url.port), token: '' })
	try {
		link.start()
		await until('the snapshot', () => host.statuses.some(([s]) => s === 'ok'))
		await until('a seq seen', () => link.lastSeq > 0)
		const seq = link.lastSeq
		// Drop the stream as a network would; the link connects again and
		// asks for what came after the last seq it saw.
		link.abort.abort()
		await until('connected again', () => host.statuses.filter(([s]) => s === 'ok').length >= 2)
		assert.ok(link.lastSeq >= seq)
		await set(link, 'display-1', 'power', 'on')
		await until('the display on', () => host.values.display_1_power === 'on')
	} finally {
		link.stop()
		child.kill()
	}
})

async function set(link, device, setting, value) {
	const error = await link.set(device, setting, value)
	assert.equal(error, null)
}
