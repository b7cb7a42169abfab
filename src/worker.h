/*-------------------------------------------------------------------------
 * worker.h
 *	  The background worker that delivers queued usage and events.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_WORKER_H
#define STIGG_WORKER_H

#include "datatype/timestamp.h"

/* Called from _PG_init when the library is preloaded. */
extern void StiggWorkerInit(void);

/* Whether this process can see the worker's shared state (preloaded). */
extern bool StiggWorkerShmemReady(void);

/* Sets the worker's latch; no-op without shared memory. */
extern void StiggWakeWorker(void);

/* The worker's pid, or 0 when it is not running. */
extern int	StiggWorkerPid(void);

/* Its last error, copied into a palloc'd string ("" when none). */
extern char *StiggWorkerLastError(void);

extern PGDLLEXPORT void StiggWorkerMain(Datum main_arg);

#endif							/* STIGG_WORKER_H */
