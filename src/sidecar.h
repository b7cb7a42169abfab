/*-------------------------------------------------------------------------
 * sidecar.h
 *	  Calls of the Stigg sidecar's methods, with errors raised as SQL errors.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_SIDECAR_H
#define STIGG_SIDECAR_H

#include <protobuf-c/protobuf-c.h>

#include "sidecar.pb-c.h"

/*
 * Calls a SidecarService method. Returns the decoded response, allocated in
 * CurrentMemoryContext, or raises an error naming what went wrong.
 */
extern ProtobufCMessage *StiggSidecarCall(const char *method,
										  const ProtobufCMessage *request,
										  const ProtobufCMessageDescriptor *response_type,
										  bool idempotent);

#endif							/* STIGG_SIDECAR_H */
