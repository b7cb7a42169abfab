/*-------------------------------------------------------------------------
 * api.h
 *	  The Stigg API (GraphQL over HTTPS).
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_API_H
#define STIGG_API_H

#include "utils/jsonb.h"

#include "transport.h"

/*
 * For the worker: one GraphQL call that does not raise. Returns the
 * response's data, or NULL with *res describing the failure in the
 * transport's terms: GraphQL errors as a permanent gRPC-style error
 * (INVALID_ARGUMENT), a refused key as UNAUTHENTICATED, and the rest as
 * connection, timeout or protocol failures.
 */
extern Jsonb *StiggApiTry(const char *query, const char *variables_json,
						  StiggCallResult *res);

#endif							/* STIGG_API_H */
