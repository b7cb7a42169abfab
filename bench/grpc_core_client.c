/*-------------------------------------------------------------------------
 * grpc_core_client.c
 *	  Bench-only reference client: unary GetEntitlement calls through gRPC C
 *	  core, the floor that the extension's libcurl transport is compared
 *	  with. Never linked into the extension.
 *
 *	  grpc_core_client HOST:PORT CALLS [CUSTOMER FEATURE]
 *
 * Prints one line: calls, mean, p50 and p99 latency in microseconds, and
 * calls per second.
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "sidecar.pb-c.h"

#define WARMUP 200

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

/* One unary call; returns has_access, or -1 on any failure. */
static int
call_once(grpc_channel *channel, grpc_completion_queue *cq,
		  const uint8_t *req, size_t req_len)
{
	grpc_slice	method = grpc_slice_from_static_string("/stigg.sidecar.v1.SidecarService/GetEntitlement");
	gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
										 gpr_time_from_seconds(5, GPR_TIMESPAN));
	grpc_call  *call;
	grpc_op		ops[6];
	grpc_slice	req_slice = grpc_slice_from_copied_buffer((const char *) req, req_len);
	grpc_byte_buffer *send_bb = grpc_raw_byte_buffer_create(&req_slice, 1);
	grpc_byte_buffer *recv_bb = NULL;
	grpc_metadata_array initial_md;
	grpc_metadata_array trailing_md;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice	details;
	grpc_event	ev;
	int			result = -1;

	grpc_metadata_array_init(&initial_md);
	grpc_metadata_array_init(&trailing_md);
	call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
									method, NULL, deadline, NULL);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &recv_bb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
	ops[5].data.recv_status_on_client.status = &status;
	ops[5].data.recv_status_on_client.status_details = &details;

	if (grpc_call_start_batch(call, ops, 6, (void *) 1, NULL) == GRPC_CALL_OK)
	{
		ev = grpc_completion_queue_pluck(cq, (void *) 1,
										 gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type == GRPC_OP_COMPLETE && ev.success && status == GRPC_STATUS_OK && recv_bb)
		{
			grpc_byte_buffer_reader reader;
			grpc_slice	all;
			Stigg__Sidecar__V1__GetEntitlementResponse *resp;

			grpc_byte_buffer_reader_init(&reader, recv_bb);
			all = grpc_byte_buffer_reader_readall(&reader);
			resp = stigg__sidecar__v1__get_entitlement_response__unpack(
				NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
			if (resp)
			{
				result = resp->has_access ? 1 : 0;
				stigg__sidecar__v1__get_entitlement_response__free_unpacked(resp, NULL);
			}
			grpc_slice_unref(all);
			grpc_byte_buffer_reader_destroy(&reader);
		}
		grpc_slice_unref(details);
	}

	grpc_metadata_array_destroy(&initial_md);
	grpc_metadata_array_destroy(&trailing_md);
	grpc_byte_buffer_destroy(send_bb);
	if (recv_bb)
		grpc_byte_buffer_destroy(recv_bb);
	grpc_slice_unref(req_slice);
	grpc_call_unref(call);
	return result;
}

int
main(int argc, char **argv)
{
	const char *target;
	int			calls;
	Stigg__Sidecar__V1__GetEntitlementRequest req = STIGG__SIDECAR__V1__GET_ENTITLEMENT_REQUEST__INIT;
	uint8_t    *buf;
	size_t		len;
	grpc_channel_credentials *creds;
	grpc_channel *channel;
	grpc_completion_queue *cq;
	double	   *lat;
	double		total = 0;
	double		start;

	if (argc < 3)
	{
		fprintf(stderr, "usage: %s HOST:PORT CALLS [CUSTOMER FEATURE]\n", argv[0]);
		return 2;
	}
	target = argv[1];
	calls = atoi(argv[2]);
	req.customer_id = argc > 3 ? argv[3] : "customer-demo-01";
	req.feature_id = argc > 4 ? argv[4] : "feature-04-analytics";
	len = stigg__sidecar__v1__get_entitlement_request__get_packed_size(&req);
	buf = malloc(len);
	stigg__sidecar__v1__get_entitlement_request__pack(&req, buf);

	grpc_init();
	creds = grpc_insecure_credentials_create();
	channel = grpc_channel_create(target, creds, NULL);
	cq = grpc_completion_queue_create_for_pluck(NULL);
	lat = calloc(calls, sizeof(double));

	for (int i = 0; i < WARMUP; i++)
		if (call_once(channel, cq, buf, len) < 0)
		{
			fprintf(stderr, "call failed during warm-up\n");
			return 1;
		}
	start = now_us();
	for (int i = 0; i < calls; i++)
	{
		double		t0 = now_us();

		if (call_once(channel, cq, buf, len) < 0)
		{
			fprintf(stderr, "call %d failed\n", i);
			return 1;
		}
		lat[i] = now_us() - t0;
		total += lat[i];
	}
	qsort(lat, calls, sizeof(double), cmp_double);
	printf("calls=%d mean_us=%.1f p50_us=%.1f p99_us=%.1f calls_per_s=%.0f\n",
		   calls, total / calls, lat[calls / 2], lat[(int) (calls * 0.99)],
		   calls / ((now_us() - start) / 1e6));

	grpc_completion_queue_shutdown(cq);
	grpc_completion_queue_destroy(cq);
	grpc_channel_destroy(channel);
	grpc_channel_credentials_release(creds);
	grpc_shutdown();
	free(lat);
	free(buf);
	return 0;
}
