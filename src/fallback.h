/*-------------------------------------------------------------------------
 * fallback.h
 *	  Answers from stigg.fallback_entitlements when the sidecar cannot.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_FALLBACK_H
#define STIGG_FALLBACK_H

#include "transport.h"

typedef struct StiggFallback
{
	bool		found;			/* a row for the feature exists */
	bool		has_access;
	bool		has_value;
	int32		value;
	bool		has_limit;
	double		usage_limit;
	bool		is_unlimited;
	int			n_enum_values;
	char	  **enum_values;	/* UTF-8 */
} StiggFallback;

/*
 * After a failed call of method about feature (UTF-8): with
 * stigg.on_sidecar_error = fallback, fills *fb from the table (or the SDK's
 * default: no access), logs a rate-limited warning, counts it and returns
 * true. Otherwise returns false, and the caller raises the call's error.
 */
extern bool StiggUseFallback(const char *method, const char *feature,
							 const StiggCallResult *res, StiggFallback *fb);

#endif							/* STIGG_FALLBACK_H */
