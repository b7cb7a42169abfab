/*-------------------------------------------------------------------------
 * guc.c
 *	  Settings of the stigg extension.
 *
 * Where the sidecar lives is superuser-only (PGC_SUSET): letting any role
 * point a backend at an arbitrary host:port would turn the database server
 * into a network probe. The per-call deadline is the caller's business and
 * can be set by anyone. Every setting is read at the start of each call, so
 * SET and a configuration reload take effect on the next call.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "guc.h"

char	   *stigg_sidecar_host = NULL;
int			stigg_sidecar_port = 8443;
bool		stigg_sidecar_tls = false;
char	   *stigg_sidecar_ca_file = NULL;
int			stigg_timeout_ms = 1000;
int			stigg_cache_ttl_ms = 5000;
int			stigg_cache_size = 10000;
bool		stigg_enforce_enabled = true;
int			stigg_on_sidecar_error = STIGG_ON_ERROR_ERROR;
int			stigg_usage_delivery = STIGG_DELIVERY_SIDECAR;

static const struct config_enum_entry delivery_options[] = {
	{"sidecar", STIGG_DELIVERY_SIDECAR, false},
	{"api", STIGG_DELIVERY_API, false},
	{NULL, 0, false}
};

static const struct config_enum_entry on_error_options[] = {
	{"error", STIGG_ON_ERROR_ERROR, false},
	{"fallback", STIGG_ON_ERROR_FALLBACK, false},
	{NULL, 0, false}
};
char	   *stigg_database = NULL;
char	   *stigg_api_url = NULL;
char	   *stigg_api_key = NULL;
char	   *stigg_api_key_file = NULL;
char	   *stigg_api_ca_file = NULL;
int			stigg_api_timeout_ms = 10000;

/*
 * The server key is never shown, not even to roles that may read every
 * setting (pg_read_all_settings): SHOW, current_setting and pg_settings all
 * go through this hook.
 */
/*
 * ALTER ROLE ... SET, ALTER DATABASE ... SET and a function's SET clause
 * (all validated with PGC_S_TEST) would store the key where every role can
 * read it: pg_db_role_setting and pg_proc are readable by PUBLIC. Per role
 * or database, name a key file instead.
 */
static bool
check_api_key(char **newval, void **extra, GucSource source)
{
	if (source == PGC_S_TEST && *newval != NULL && (*newval)[0] != '\0')
	{
		GUC_check_errmsg("stigg.api_key cannot be stored with ALTER ROLE, ALTER DATABASE or a function's SET clause");
		GUC_check_errdetail("Those settings are readable by every role (pg_db_role_setting, pg_proc).");
		GUC_check_errhint("Set stigg.api_key_file per role or database instead, naming a file only the server can read.");
		return false;
	}
	return true;
}

static const char *
show_api_key(void)
{
	return (stigg_api_key != NULL && stigg_api_key[0] != '\0') ? "********" : "";
}
int			stigg_batch_size = 500;
int			stigg_worker_naptime_ms = 10000;
int			stigg_retry_max_delay_ms = 10000;
int			stigg_delivered_retention_s = 86400;

static bool
check_sidecar_host(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("stigg.sidecar_host must not be empty.");
		return false;
	}
	if (strpbrk(*newval, "/?#@ \t\r\n") != NULL)
	{
		GUC_check_errdetail("stigg.sidecar_host takes a host name or an IP address, not a URL.");
		return false;
	}
	return true;
}

void
StiggDefineGucs(void)
{
	DefineCustomStringVariable("stigg.sidecar_host",
							   "Host name or IP address of the Stigg sidecar.",
							   NULL,
							   &stigg_sidecar_host,
							   "localhost",
							   PGC_SUSET,
							   0,
							   check_sidecar_host, NULL, NULL);

	DefineCustomIntVariable("stigg.sidecar_port",
							"TCP port of the Stigg sidecar.",
							NULL,
							&stigg_sidecar_port,
							8443, 1, 65535,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("stigg.sidecar_tls",
							 "Connect to the Stigg sidecar over TLS.",
							 "The certificate is verified against stigg.sidecar_ca_file, or the system's trust store when that is empty.",
							 &stigg_sidecar_tls,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("stigg.sidecar_ca_file",
							   "File of CA certificates that sign the sidecar's TLS certificate.",
							   "Empty means the system's trust store.",
							   &stigg_sidecar_ca_file,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.timeout",
							"Deadline of one call to the Stigg sidecar.",
							"Covers connecting, sending and waiting for the answer.",
							&stigg_timeout_ms,
							1000, 1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.cache_ttl",
							"How long an entitlement answered by the sidecar is reused.",
							"0 turns the cache off. Usage stays fresh regardless: queued reports and the worker's acknowledgements are applied on top.",
							&stigg_cache_ttl_ms,
							5000, 0, 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("stigg.on_sidecar_error",
							 "What an entitlement check does when the sidecar cannot answer.",
							 "error raises the call's error; fallback answers from stigg.fallback_entitlements.",
							 &stigg_on_sidecar_error,
							 STIGG_ON_ERROR_ERROR,
							 on_error_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("stigg.api_url",
							   "Base URL of the Stigg API (GraphQL).",
							   NULL,
							   &stigg_api_url,
							   "https://api.stigg.io",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("stigg.api_key",
							   "Server key of the Stigg environment.",
							   "Shown to nobody; prefer stigg.api_key_file, which keeps it out of the configuration and the statement log.",
							   &stigg_api_key,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_api_key, NULL, show_api_key);

	DefineCustomStringVariable("stigg.api_key_file",
							   "File whose first line is the Stigg server key; used when stigg.api_key is empty.",
							   NULL,
							   &stigg_api_key_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("stigg.api_ca_file",
							   "File of CA certificates for the Stigg API's TLS certificate.",
							   "Empty means the system's trust store.",
							   &stigg_api_ca_file,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.api_timeout",
							"Deadline of one call to the Stigg API.",
							NULL,
							&stigg_api_timeout_ms,
							10000, 1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("stigg.usage_delivery",
							 "How the worker delivers usage and events.",
							 "sidecar: ReportUsageBulk and ReportEvents (at least once); api: the Stigg API's reportUsageBulk and reportEvent with an idempotency key per row (exactly once; needs the API key).",
							 &stigg_usage_delivery,
							 STIGG_DELIVERY_SIDECAR,
							 delivery_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("stigg.enforce",
							 "Whether stigg_enforce triggers check entitlements.",
							 "Turn off (superuser) for restores and migrations.",
							 &stigg_enforce_enabled,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	/*
	 * A PGC_POSTMASTER setting cannot be defined once the server runs; the
	 * shared cache and the worker exist only when the library is preloaded.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("stigg.cache_size",
								"Entries in the shared entitlement cache.",
								"Each takes about 1 kB of shared memory; a backend without the preloaded library keeps 1000 of its own.",
								&stigg_cache_size,
								10000, 16, 10000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("stigg.database",
								   "Database whose usage queue the background worker delivers.",
								   "The worker runs when stigg is in shared_preload_libraries.",
								   &stigg_database,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.batch_size",
							"Rows the worker sends to the sidecar in one call.",
							NULL,
							&stigg_batch_size,
							500, 1, 10000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.worker_naptime",
							"How long the worker sleeps when nothing wakes it.",
							"Commits wake it at once; this timer covers the rest.",
							&stigg_worker_naptime_ms,
							10000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.retry_max_delay",
							"Longest wait between the worker's retries while the sidecar fails.",
							"Retries back off exponentially, with jitter, up to this.",
							&stigg_retry_max_delay_ms,
							10000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stigg.delivered_retention",
							"How long delivered rows stay in the queue tables.",
							"They show the sidecar's acknowledgement (measurement id, current usage).",
							&stigg_delivered_retention_s,
							86400, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("stigg");
#else
	EmitWarningsOnPlaceholders("stigg");
#endif
}
