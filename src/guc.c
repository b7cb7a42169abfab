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

#include "utils/guc.h"

#include "guc.h"

char	   *stigg_sidecar_host = NULL;
int			stigg_sidecar_port = 8443;
bool		stigg_sidecar_tls = false;
char	   *stigg_sidecar_ca_file = NULL;
int			stigg_timeout_ms = 1000;

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

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("stigg");
#else
	EmitWarningsOnPlaceholders("stigg");
#endif
}
