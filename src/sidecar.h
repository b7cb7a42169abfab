/*-------------------------------------------------------------------------
 * sidecar.h
 *	  Calls of the Stigg sidecar's methods, with errors raised as SQL errors.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_SIDECAR_H
#define STIGG_SIDECAR_H

#include <protobuf-c/protobuf-c.h>

#include "sidecar.pb-c.h"

#include "transport.h"

/*
 * Calls a SidecarService method. Returns the decoded response, allocated in
 * CurrentMemoryContext, or raises an error naming what went wrong.
 */
extern ProtobufCMessage *StiggSidecarCall(const char *method,
										  const ProtobufCMessage *request,
										  const ProtobufCMessageDescriptor *response_type,
										  bool idempotent);

/*
 * The same without raising: returns NULL and fills *result on failure (an
 * undecodable answer is STIGG_CALL_PROTOCOL). For the background worker,
 * which decides per outcome whether to retry, isolate or give up.
 */
extern ProtobufCMessage *StiggSidecarInvoke(const char *method,
											const ProtobufCMessage *request,
											const ProtobufCMessageDescriptor *response_type,
											bool idempotent,
											StiggCallResult *result);

/* Raises the SQL error of a failed call (see the README's error table). */
extern void StiggRaiseCallError(const char *method, const StiggCallResult *result) pg_attribute_noreturn();

/* Whether a failed call may succeed later unchanged (sidecar down, busy). */
extern bool StiggCallIsRetryable(const StiggCallResult *result);

/* A one-line description of a failed call, for logs and status views. */
extern char *StiggDescribeCall(const char *method, const StiggCallResult *result);

#endif							/* STIGG_SIDECAR_H */
