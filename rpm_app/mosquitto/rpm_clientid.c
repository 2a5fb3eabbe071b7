/*
 * rpm_clientid: a Mosquitto 2.0 plugin that binds MQTT client ids to users.
 *
 * Mosquitto's password and ACL files say who may connect and which topics each user may use, but
 * not which client id a user may take: a client that connects with an id already in use takes over
 * that session (Mosquitto closes the other connection, and the new one inherits the session's
 * subscriptions and queued messages). So any user could knock the bridge off, or take a patient's
 * command channel, by connecting with its id.
 *
 * This plugin refuses a connection unless its client id is the user name, or the user name followed
 * by ':' and anything ("rpm-bridge:host-0", "agent-p0001:cmd"). User names cannot contain ':' (the
 * password file's separator), so no user's ids can collide with another's. Clients without a user
 * name are left to the password check (anonymous clients are refused there).
 *
 * It decides nothing else: after it, the password file checks the password as usual (Mosquitto
 * asks plugins first; DEFER passes the decision on).
 *
 * Build: cc -shared -fPIC -O2 -o rpm_clientid.so rpm_clientid.c   (Debian: apt install mosquitto-dev)
 * Use:   plugin /path/to/rpm_clientid.so   (in mosquitto.conf, global, with per_listener_settings false)
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id = NULL;

static int bound(const char *client_id, const char *username)
{
	size_t n = strlen(username);
	if (strncmp(client_id, username, n) != 0) {
		return 0;
	}
	return client_id[n] == '\0' || client_id[n] == ':';
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id;
	(void)event;
	(void)userdata;

	if (ed->username == NULL) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	client_id = mosquitto_client_id(ed->client);
	if (client_id != NULL && bound(client_id, ed->username)) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"rpm_clientid: refused client id '%s' for user '%s' (ids must be the user name or start with it and ':')",
			client_id ? client_id : "", ed->username);
	return MOSQ_ERR_AUTH;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for (i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	(void)opts;
	(void)opt_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	(void)opts;
	(void)opt_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
}
