#!/usr/bin/python3
"""Checks the dev sidecar's own behaviour over real gRPC: usage (delta, set,
bulk, resources, resets), events (deduplicated), the V2 methods and failure
injection. Prints TAP. Usage: selftest.py HOST:PORT CONTROL_PORT"""

import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
import grpc  # noqa: E402
import sidecar_pb2 as pb  # noqa: E402
from google.protobuf import empty_pb2  # noqa: E402

target, control = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(target)
n = 0


def ok(cond, name):
    global n
    n += 1
    print("%sok %d - %s" % ("" if cond else "not ", n, name), flush=True)


def rpc(method, req, resp_cls):
    call = channel.unary_unary("/stigg.sidecar.v1.SidecarService/" + method,
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=resp_cls.FromString)
    return call(req, timeout=5)


def code_of(method, req, resp_cls):
    try:
        rpc(method, req, resp_cls)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def post(path, body):
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (control, path),
                               data=json.dumps(body).encode(), method="POST",
                               headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))


def usage(customer, feature, resource=None):
    req = pb.GetMeteredEntitlementRequest(customer_id=customer, feature_id=feature)
    if resource:
        req.resource_id = resource
    return rpc("GetMeteredEntitlement", req, pb.GetMeteredEntitlementResponse).entitlement.current_usage


def report(customer, feature, value, behavior=None, resource=None):
    req = pb.ReportUsageRequest(customer_id=customer, feature_id=feature, value=value)
    if behavior:
        req.update_behavior = behavior
    if resource:
        req.resource_id = resource
    return rpc("ReportUsage", req, pb.ReportUsageResponse)


C, T = "customer-demo-01", "feature-01-templates"

r = report(C, T, 2)
ok(r.current_usage == 5 and r.measurement_id and usage(C, T) == 5, "a delta adds: 3 + 2 = 5")
report(C, T, 1, pb.USAGE_UPDATE_BEHAVIOR_SET)
ok(usage(C, T) == 1, "set replaces: 1")
report(C, T, -1)
ok(usage(C, T) == 0, "a negative delta decrements: 0")
report(C, T, 4, resource="site-01")
ok(usage(C, T, "site-01") == 6 and usage(C, T) == 0, "usage per resource is its own")

bad = pb.ReportUsageBulkRequest(usages=[
    pb.ReportUsageRequest(customer_id=C, feature_id=T, value=1),
    pb.ReportUsageRequest(customer_id=C, feature_id="feature-04-analytics", value=1)])
ok(code_of("ReportUsageBulk", bad, pb.ReportUsageBulkResponse) == "INVALID_ARGUMENT"
   and usage(C, T) == 0, "a bulk report with a bad row is refused whole")
good = pb.ReportUsageBulkRequest(usages=[
    pb.ReportUsageRequest(customer_id=C, feature_id=T, value=1),
    pb.ReportUsageRequest(customer_id=C, feature_id=T, value=2)])
resp = rpc("ReportUsageBulk", good, pb.ReportUsageBulkResponse)
ok([u.current_usage for u in resp.usages] == [1, 3] and usage(C, T) == 3,
   "a bulk report applies in order")
ok(code_of("ReportUsage", pb.ReportUsageRequest(customer_id="nobody", feature_id=T, value=1),
           pb.ReportUsageResponse) == "NOT_FOUND", "usage of an unknown customer: NOT_FOUND")
ok(code_of("ReportUsage", pb.ReportUsageRequest(customer_id=C, feature_id=T, value=float("nan")),
           pb.ReportUsageResponse) == "INVALID_ARGUMENT", "a NaN value: INVALID_ARGUMENT")

A = "feature-07-active-users"
before = usage(C, A)
ev = [pb.Event(event_name="user_login", customer_id=C, idempotency_key=k) for k in ("k1", "k2", "k1")]
rpc("ReportEvents", pb.ReportEventsRequest(events=ev), empty_pb2.Empty)
rpc("ReportEvents", pb.ReportEventsRequest(events=ev[:1]), empty_pb2.Empty)
ok(usage(C, A) == before + 2, "events count once per idempotency key")
ok(code_of("ReportEvents", pb.ReportEventsRequest(events=[pb.Event(event_name="x", customer_id=C)]),
           empty_pb2.Empty) == "INVALID_ARGUMENT", "an event without a key: INVALID_ARGUMENT")
e = pb.Event(event_name="ai_prompt", customer_id="customer-demo-02", idempotency_key="p1")
e.dimensions["tokens"].number_value = 120
rpc("ReportEvents", pb.ReportEventsRequest(events=[e]), empty_pb2.Empty)
ok(usage("customer-demo-02", "feature-13-ai-credits") == 120, "a SUM feature adds a dimension")

report(C, "feature-02-campaigns", 30)
denied = rpc("GetMeteredEntitlement", pb.GetMeteredEntitlementRequest(
    customer_id=C, feature_id="feature-02-campaigns", options=pb.MeteredEntitlementOptions(requested_usage=3)),
    pb.GetMeteredEntitlementResponse)
ok(not denied.has_access, "30 of 32 campaigns: 3 more are denied")
post("/clock", {"now": "2023-12-21T00:00:00Z"})
ok(usage(C, "feature-02-campaigns") == 0, "the monthly reset clears reported usage")
post("/clock", {"now": "2023-12-05T12:00:00Z"})

v2 = rpc("GetEntitlementV2", pb.GetEntitlementV2Request(customer_id=C, feature_id="feature-04-analytics"),
         pb.GetEntitlementV2Response)
ok(v2.entitlement.has_access and v2.entitlement.WhichOneof("entitlement") == "boolean", "GetEntitlementV2")
st = rpc("GetEntitlementsStateV2", pb.GetEntitlementsStateV2Request(customer_id=C),
         pb.GetEntitlementsStateV2Response)
ok(len(st.entitlements) == 6, "GetEntitlementsStateV2 lists 6 entitlements")

check = pb.GetBooleanEntitlementRequest(customer_id=C, feature_id="feature-04-analytics")
post("/faults", {"faults": [{"method": "GetBooleanEntitlement", "action": "error", "code": "UNAVAILABLE", "times": 2}]})
codes = [code_of("GetBooleanEntitlement", check, pb.GetBooleanEntitlementResponse) for _ in range(3)]
ok(codes == ["UNAVAILABLE", "UNAVAILABLE", "OK"], "two failures, then success: %s" % codes)
post("/faults", {"faults": [{"method": "*", "action": "delay", "ms": 200, "times": 1}]})
t0 = time.monotonic()
rpc("GetBooleanEntitlement", check, pb.GetBooleanEntitlementResponse)
ok(time.monotonic() - t0 >= 0.2, "an added delay")
post("/faults", {"faults": [{"action": "garbage", "times": 1}]})
ok(code_of("GetBooleanEntitlement", check, pb.GetBooleanEntitlementResponse) == "INTERNAL",
   "garbage bytes do not decode")
print("1..%d" % n)
