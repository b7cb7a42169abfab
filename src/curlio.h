/*-------------------------------------------------------------------------
 * curlio.h
 *	  libcurl plumbing shared by the sidecar transport and the API client:
 *	  process-wide set-up, name resolution without resolver threads, and an
 *	  interruptible wait for one transfer. Nothing here raises an error.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_CURLIO_H
#define STIGG_CURLIO_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

typedef enum StiggWait
{
	STIGG_WAIT_DONE,			/* the transfer finished; see *code */
	STIGG_WAIT_INTERRUPTED,		/* a cancel or terminate is pending */
	STIGG_WAIT_TIMEOUT,			/* the deadline passed first */
	STIGG_WAIT_FAILED			/* libcurl's multi interface failed */
} StiggWait;

/* curl_global_init, once per process, on first use (never in the postmaster). */
extern bool StiggCurlInit(void);

/* Whether a cancel or terminate request is pending (safe in callbacks). */
extern bool StiggInterruptPending(void);

/*
 * Resolves host once and returns a CURLOPT_RESOLVE list with every address
 * ("host:port:addr,addr"), so that libcurl starts no resolver thread; NULL
 * with *ok for an address literal, which needs none. On failure *ok is false
 * and err says why.
 */
extern struct curl_slist *StiggCurlResolve(const char *host, int port, bool *ok,
										   char *err, size_t errlen);

/*
 * Drives easy (already added to multi) to its end, waiting in slices of at
 * most 50 ms and checking for interrupts after each, until timeout_ms.
 */
extern StiggWait StiggCurlRun(CURLM *multi, CURL *easy, int timeout_ms, CURLcode *code);

#endif							/* STIGG_CURLIO_H */
