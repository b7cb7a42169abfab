/*
 * bench_noop(text, text) RETURNS boolean: the baseline for a per-row
 * function call in bench/run.sh. Bench-only; never installed.
 */
#include "postgres.h"

#include "fmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(bench_noop);

Datum
bench_noop(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(true);
}
