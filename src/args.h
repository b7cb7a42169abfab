/*-------------------------------------------------------------------------
 * args.h
 *	  Checks of SQL arguments shared by every stigg function.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_ARGS_H
#define STIGG_ARGS_H

#include "fmgr.h"

/* Stigg's ids (refIds) are at most this long, in bytes. */
#define STIGG_MAX_ID_BYTES 255

/*
 * An id argument: NULL is an error (null_value_not_allowed) when required
 * and means "none" otherwise; empty or longer than STIGG_MAX_ID_BYTES (in
 * the database encoding or in UTF-8) is invalid_parameter_value.
 */
extern text *StiggIdArg(FunctionCallInfo fcinfo, int argno, const char *name,
						bool required);

/* A text value as a NUL-terminated UTF-8 string, or NULL for NULL. */
extern char *StiggUtf8(text *t);
extern char *StiggCStringToUtf8(const char *s);

#endif							/* STIGG_ARGS_H */
