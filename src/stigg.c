/*-------------------------------------------------------------------------
 * stigg.c
 *	  Entry point of the stigg extension: Stigg's entitlement checks and
 *	  usage metering from SQL.
 *
 * _PG_init only wires things up. Where each concern lives:
 *	guc.c			settings (stigg.*)
 *	transport.c		gRPC over HTTP/2 through libcurl; nothing else knows
 *	sidecar.c		method calls, and the mapping of outcomes to SQLSTATEs
 *	pbjson.c		sidecar messages as JSON and SQL values
 *	entitlements.c	the SQL-callable entitlement checks
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	StiggDefineGucs();
}
