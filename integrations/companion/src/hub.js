// The module's logic, apart from Companion: it follows a patchbay hub's
// devices over HTTP (the event stream, resumed after a drop) and gives the
// host (Companion's InstanceBase, or a test) its definitions, variable values
// and feedback changes. `host` needs: setActionDefinitions,
// setFeedbackDefinitions, setVariableDefinitions, setVariableValues,
// setPresetDefinitions, checkFeedbacks, updateStatus(status, message), log.

'use strict'

const TAGS = 'dev/+/meta,dev/+/state,dev/+/online'
const RETRY_MS = [250, 500, 1000, 2000, 5000]
const STATUS = {
	ok: 'ok',
	connecting: 'connecting',
	failure: 'connection_failure',
	badConfig: 'bad_config',
}

/** A variable id from a device id and a setting: letters, digits and `_`. */
function variableId(device, setting) {
	return `${device}_${setting}`.replace(/[^A-Za-z0-9_]/g, '_')
}

/** Text for a state value on a button. */
function shown(v) {
	if (v === null || v === undefined) return ''
	if (typeof v === 'object') return JSON.stringify(v)
	return String(v)
}

/** The value a typed word stands for, by the setting's type. */
function coerce(setting, text) {
	const t = String(text).trim()
	if (!setting) return t
	if (setting.type === 'bool') return ['true', 'on', 'yes', '1'].includes(t.toLowerCase())
	if (setting.type === 'int') {
		const n = Number.parseInt(t, 10)
		return Number.isNaN(n) ? t : n
	}
	if (setting.type === 'enum') return (setting.values || []).find((v) => v.toLowerCase() === t.toLowerCase()) ?? t
	return t
}

class HubLink {
	constructor(host, config) {
		this.host = host
		this.config = config
		this.devices = new Map() // id -> { meta, state, online }
		this.failed = new Map() // id -> the last command's error, if it failed
		this.lastSeq = 0
		this.stopped = false
		this.abort = null
		this.retry = 0
		this.defined = false
	}

	/** The HTTP base URL, or null when the configuration is incomplete. */
	base() {
		const { host, port } = this.config || {}
		if (!host || !port) return null
		return `http://${host}:${port}`
	}

	headers(extra = {}) {
		const h = { 'X-Client-Name': 'companion', ...extra }
		if (this.config.token) h.Authorization = `Bearer ${this.config.token}`
		return h
	}

	/** Connects and follows the hub until stop(). */
	start() {
		if (!this.base()) {
			this.host.updateStatus(STATUS.badConfig, 'Set the hub host and port')
			return
		}
		this.host.updateStatus(STATUS.connecting)
		this.loop()
	}

	stop() {
		this.stopped = true
		if (this.abort) this.abort.abort()
	}

	async loop() {
		while (!this.stopped) {
			try {
				await this.follow()
			} catch (e) {
				if (this.stopped) return
				if (e.badConfig) {
					this.host.updateStatus(STATUS.badConfig, e.message)
				} else {
					this.host.updateStatus(STATUS.failure, e.message)
				}
			}
			if (this.stopped) return
			const wait = RETRY_MS[Math.min(this.retry++, RETRY_MS.length - 1)]
			await new Promise((r) => setTimeout(r, wait))
		}
	}

	/** One connection of the event stream: snapshot, then live changes. */
	async follow() {
		this.abort = new AbortController()
		const q = new URLSearchParams({ tags: TAGS })
		const headers = this.headers({ Accept: 'text/event-stream' })
		if (this.lastSeq > 0) headers['Last-Event-ID'] = String(this.lastSeq)
		const res = await fetch(`${this.base()}/api/events?${q}`, { headers, signal: this.abort.signal })
		if (res.status === 401 || res.status === 403) {
			const e = new Error(`The hub refused the token (${res.status})`)
			e.badConfig = true
			throw e
		}
		if (!res.ok) throw new Error(`The hub answered ${res.status}`)
		const decoder = new TextDecoder()
		let buf = ''
		for await (const chunk of res.body) {
			buf += decoder.decode(chunk, { stream: true })
			let end
			while ((end = buf.indexOf('\n\n')) >= 0) {
				const block = buf.slice(0, end)
				buf = buf.slice(end + 2)
				this.onEvent(block)
			}
		}
		throw new Error('The hub closed the event stream')
	}

	onEvent(block) {
		let event = 'message'
		let data = ''
		let id = null
		for (const line of block.split('\n')) {
			if (line.startsWith('event:')) event = line.slice(6).trim()
			else if (line.startsWith('data:')) data += line.slice(5).trim()
			else if (line.startsWith('id:')) id = line.slice(3).trim()
		}
		if (id) this.lastSeq = Math.max(this.lastSeq, Number(id) || 0)
		if (event === 'snapshot') {
			this.retry = 0
			this.host.updateStatus(STATUS.ok)
			this.publishDefinitions()
			this.publishValues()
			this.host.checkFeedbacks()
			return
		}
		if (event !== 'msg' || !data) return
		const m = JSON.parse(data)
		const parts = m.tag.split('/')
		if (parts.length !== 3 || parts[0] !== 'dev') return
		const [, id2, part] = parts
		const d = this.devices.get(id2) || { meta: null, state: {}, online: null }
		if (part === 'meta') {
			if (m.body === null) {
				this.devices.delete(id2)
			} else {
				d.meta = m.body
				this.devices.set(id2, d)
			}
			if (this.ready()) this.publishDefinitions()
			return
		}
		if (part === 'state') d.state = m.body || {}
		if (part === 'online') d.online = m.body
		this.devices.set(id2, d)
		if (this.ready()) {
			this.publishValues(id2)
			this.host.checkFeedbacks()
		}
	}

	/** Whether the first snapshot is in (definitions are out). */
	ready() {
		return this.defined === true
	}

	described() {
		return [...this.devices.entries()].filter(([, d]) => d.meta).sort(([a], [b]) => a.localeCompare(b))
	}

	setting(id, name) {
		const d = this.devices.get(id)
		return d && d.meta && (d.meta.settings || []).find((s) => s.name === name)
	}

	/** Actions, feedbacks, variables and presets from the devices' schemas. */
	definitions() {
		const devices = this.described()
		const deviceChoices = devices.map(([id, d]) => ({ id, label: d.meta.name ? `${d.meta.name} (${id})` : id }))
		const settingNames = new Set()
		for (const [, d] of devices) for (const s of d.meta.settings || []) if (s.writable) settingNames.add(s.name)
		const settingChoices = [...settingNames].sort().map((n) => ({ id: n, label: n }))
		const first = (list) => (list.length ? list[0].id : '')
		const deviceOption = { type: 'dropdown', id: 'device', label: 'Device', choices: deviceChoices, default: first(deviceChoices) }
		const settingOption = { type: 'dropdown', id: 'setting', label: 'Setting', choices: settingChoices, default: first(settingChoices) }
		const valueOption = { type: 'textinput', id: 'value', label: 'Value (e.g. on, hdmi1, true, 40)', default: 'on' }

		const actions = {
			set: {
				name: 'Set a setting',
				options: [deviceOption, settingOption, valueOption],
				callback: async (action) => this.set(action.options.device, action.options.setting, action.options.value),
			},
		}
		const feedbacks = {
			setting_equals: {
				type: 'boolean',
				name: 'Setting equals value',
				defaultStyle: { bgcolor: 0x00aa00, color: 0xffffff },
				options: [deviceOption, { ...settingOption, choices: this.allSettingChoices(devices), default: 'power' }, valueOption],
				callback: (fb) => this.settingEquals(fb.options.device, fb.options.setting, fb.options.value),
			},
			device_online: {
				type: 'boolean',
				name: 'Device online',
				defaultStyle: { bgcolor: 0x005500, color: 0xffffff },
				options: [deviceOption],
				callback: (fb) => this.isOnline(fb.options.device),
			},
			command_failed: {
				type: 'boolean',
				name: 'Last command failed',
				defaultStyle: { bgcolor: 0xaa0000, color: 0xffffff },
				options: [deviceOption],
				callback: (fb) => this.failed.has(fb.options.device),
			},
		}
		const variables = []
		for (const [id, d] of devices) {
			variables.push({ variableId: variableId(id, 'online'), name: `${id}: online` })
			for (const s of d.meta.settings || []) variables.push({ variableId: variableId(id, s.name), name: `${id}: ${s.label || s.name}` })
		}
		const presets = {}
		for (const [id, d] of devices) {
			const title = d.meta.name || id
			const button = (key, text, setting, value) => {
				presets[`${id}_${key}`] = {
					type: 'button',
					category: title,
					name: `${title}: ${text}`,
					style: { text: `${id}\\n${text}`, size: 'auto', color: 0xffffff, bgcolor: 0x000000 },
					steps: [{ down: [{ actionId: 'set', options: { device: id, setting, value } }], up: [] }],
					feedbacks: [
						{ feedbackId: 'setting_equals', options: { device: id, setting, value }, style: { bgcolor: 0x00aa00, color: 0xffffff } },
						{ feedbackId: 'command_failed', options: { device: id }, style: { bgcolor: 0xaa0000, color: 0xffffff } },
					],
				}
			}
			const power = this.setting(id, 'power')
			if (power && power.writable) {
				button('power_on', 'On', 'power', 'on')
				button('power_off', 'Off', 'power', 'off')
			}
			const input = this.setting(id, 'input')
			if (input && input.writable) for (const v of input.values || []) button(`input_${v}`, v, 'input', v)
		}
		return { actions, feedbacks, variables, presets }
	}

	allSettingChoices(devices) {
		const names = new Set()
		for (const [, d] of devices) for (const s of d.meta.settings || []) names.add(s.name)
		return [...names].sort().map((n) => ({ id: n, label: n }))
	}

	publishDefinitions() {
		const defs = this.definitions()
		this.host.setActionDefinitions(defs.actions)
		this.host.setFeedbackDefinitions(defs.feedbacks)
		this.host.setVariableDefinitions(defs.variables)
		this.host.setPresetDefinitions(defs.presets)
		this.defined = true
	}

	publishValues(only) {
		const values = {}
		for (const [id, d] of this.described()) {
			if (only && id !== only) continue
			values[variableId(id, 'online')] = this.isOnline(id) ? 'yes' : 'no'
			for (const s of d.meta.settings || []) values[variableId(id, s.name)] = shown((d.state || {})[s.name])
		}
		this.host.setVariableValues(values)
	}

	isOnline(id) {
		const d = this.devices.get(id)
		return !!(d && d.online && d.online.online === true)
	}

	settingEquals(id, name, value) {
		const d = this.devices.get(id)
		if (!d) return false
		const now = (d.state || {})[name]
		// Power counts as on while warming up, as a projector's button should.
		if (name === 'power' && String(value).toLowerCase() === 'on' && now === 'warming') return true
		return shown(now).toLowerCase() === shown(coerce(this.setting(id, name), value)).toLowerCase()
	}

	/** Sends one setting to a device; a failure lights "last command failed". */
	async set(id, name, value) {
		const body = { [name]: coerce(this.setting(id, name), value) }
		let error = null
		try {
			const res = await fetch(`${this.base()}/api/devices/${encodeURIComponent(id)}`, {
				method: 'PATCH',
				headers: this.headers({ 'Content-Type': 'application/json' }),
				body: JSON.stringify(body),
			})
			if (!res.ok) {
				const answer = await res.json().catch(() => ({}))
				error = (answer.error && answer.error.message) || `HTTP ${res.status}`
			}
		} catch (e) {
			error = e.message
		}
		if (error) {
			this.failed.set(id, error)
			this.host.log('warn', `${id} ${name}=${value}: ${error}`)
		} else {
			this.failed.delete(id)
		}
		this.host.checkFeedbacks('command_failed')
		return error
	}
}

module.exports = { HubLink, STATUS, variableId, coerce }
