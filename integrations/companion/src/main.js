// The Companion module: Companion's side (configuration, lifecycle) around
// the hub logic in hub.js. Its status values are Companion's own
// (`ok`, `connecting`, `connection_failure`, `bad_config`).

'use strict'

const { InstanceBase, runEntrypoint } = require('@companion-module/base')
const { HubLink } = require('./hub')

class PatchbayInstance extends InstanceBase {
	async init(config) {
		this.follow(config)
	}

	async configUpdated(config) {
		this.follow(config)
	}

	async destroy() {
		if (this.link) this.link.stop()
	}

	getConfigFields() {
		return [
			{ type: 'textinput', id: 'host', label: 'Hub host', width: 8, default: '127.0.0.1' },
			{ type: 'number', id: 'port', label: 'HTTP port', width: 4, default: 8080, min: 1, max: 65535 },
			{ type: 'textinput', id: 'token', label: 'Token (when the hub requires one)', width: 12, default: '' },
		]
	}

	follow(config) {
		if (this.link) this.link.stop()
		this.link = new HubLink(this, config)
		this.link.start()
	}
}

runEntrypoint(PatchbayInstance, [])
