#!/usr/bin/python3
"""Stigg dev sidecar: a real gRPC server speaking stigg.sidecar.v1.

It serves entitlements from a JSON catalog and decides access the way
Stigg's sidecar does (see README, "Dev sidecar"), so that the extension can
be developed and tested without Stigg's cloud. Tests drive it through an
HTTP control port: failure injection, a settable clock, and what it received.

Usage:
  stigg_dev_sidecar.py --catalog FILE [--port N] [--control-port N]
                       [--tls-cert F --tls-key F] [--fault JSON]...
                       [--daemon --log-file F]

It also serves the Stigg API's GraphQL operations that the extension uses
(provisioning) on --api-port, checking X-API-KEY against --api-key.

It prints one line once it serves:
  READY grpc_port=N control_port=M pid=P api_port=A
"""

import argparse
import calendar
import collections
import datetime
import json
import math
import os
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

SERVICE = "stigg.sidecar.v1.SidecarService"

# ---------------------------------------------------------------- time


def parse_time(text):
    if text is None:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(
        datetime.timezone.utc)


def format_time(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def add_months(t, months):
    total = t.year * 12 + (t.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


FIXED_PERIODS = {
    "HOUR": datetime.timedelta(hours=1),
    "DAY": datetime.timedelta(days=1),
    "WEEK": datetime.timedelta(weeks=1),
}
MONTHLY_PERIODS = {"MONTH": 1, "YEAR": 12}


def current_period(anchor, period, now):
    """The [start, end) of the reset period around now, in whole periods from anchor."""
    if period in FIXED_PERIODS:
        step = FIXED_PERIODS[period]
        k = math.floor((now - anchor) / step)
        start = anchor + k * step
        return start, start + step
    months = MONTHLY_PERIODS[period]
    k = ((now.year - anchor.year) * 12 + now.month - anchor.month) // months
    start = add_months(anchor, k * months)
    while start > now:
        k -= 1
        start = add_months(anchor, k * months)
    while add_months(anchor, (k + 1) * months) <= now:
        k += 1
        start = add_months(anchor, k * months)
    return start, add_months(anchor, (k + 1) * months)


class CatalogError(Exception):
    pass


class DenyError(Exception):
    """An access decision that denies before an entitlement is found."""

    def __init__(self, reason, feature=None):
        super().__init__(reason)
        self.reason = reason
        self.feature = feature


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- the catalog and its state

FEATURE_TYPES = ("BOOLEAN", "NUMBER", "ENUM")
METER_TYPES = ("NONE", "FLUCTUATING", "INCREMENTAL")
RESET_PERIODS = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")


class Store:
    """Catalog, usage and events. One lock guards all of it."""

    def __init__(self, catalog):
        self.lock = threading.RLock()
        self.load(catalog)

    def load(self, catalog):
        with self.lock:
            self.catalog = catalog
            self.features = catalog.get("features", {})
            self.plans = catalog.get("plans", {})
            self.customers = catalog.get("customers", {})
            self.clock = parse_time(catalog.get("clock"))
            self.validate()
            # usage: (customer, resource or "", feature) -> [value, period start or None]
            self.usage = {}
            self.events_accepted = collections.OrderedDict()
            self.event_duplicates = 0
            self.duplicate_usage_keys = 0
            self.api_calls = collections.Counter()
            self.measurements = []
            for cid, cust in self.customers.items():
                for sub in cust.get("subscriptions", []):
                    # usage is a number, or {"value": n, "at": time} for usage
                    # counted at another time (in an earlier reset period, say)
                    for fid, value in sub.get("usage", {}).items():
                        at = None
                        if isinstance(value, dict):
                            at = parse_time(value.get("at"))
                            value = value["value"]
                        key = (cid, sub.get("resource") or "", fid)
                        self.usage[key] = [float(value), self.period_key(cid, sub.get("resource"), fid, at)]

    def validate(self):
        for fid, f in self.features.items():
            if f.get("type") not in FEATURE_TYPES:
                raise CatalogError("feature %s: type must be one of %s" % (fid, FEATURE_TYPES))
            if f.get("meterType", "NONE") not in METER_TYPES:
                raise CatalogError("feature %s: meterType must be one of %s" % (fid, METER_TYPES))
        for pid, p in self.plans.items():
            for fid, e in p.get("entitlements", {}).items():
                if fid not in self.features:
                    raise CatalogError("plan %s: unknown feature %s" % (pid, fid))
                if e.get("resetPeriod") and e["resetPeriod"] not in RESET_PERIODS:
                    raise CatalogError("plan %s, %s: resetPeriod must be one of %s" % (pid, fid, RESET_PERIODS))
        for cid, c in self.customers.items():
            for sub in c.get("subscriptions", []):
                if sub.get("plan") not in self.plans:
                    raise CatalogError("customer %s: unknown plan %s" % (cid, sub.get("plan")))
                if sub.get("resource") and sub["resource"] not in c.get("resources", []):
                    raise CatalogError("customer %s: subscription names unknown resource %s"
                                       % (cid, sub["resource"]))

    def now(self):
        return self.clock or datetime.datetime.now(datetime.timezone.utc)

    # -- entitlement lookup

    def customer(self, cid, rid):
        c = self.customers.get(cid)
        if c is None:
            raise DenyError("CUSTOMER_NOT_FOUND")
        if c.get("archived"):
            raise DenyError("CUSTOMER_IS_ARCHIVED")
        if not any(s.get("status", "ACTIVE") in ("ACTIVE", "IN_TRIAL")
                   for s in c.get("subscriptions", [])):
            raise DenyError("NO_ACTIVE_SUBSCRIPTION")
        if rid is not None and rid not in c.get("resources", []):
            raise DenyError("CUSTOMER_RESOURCE_NOT_FOUND")
        return c

    def active_subscriptions(self, c, rid):
        return [s for s in c.get("subscriptions", [])
                if s.get("status", "ACTIVE") in ("ACTIVE", "IN_TRIAL")
                and (s.get("resource") or None) == rid]

    def entitlements_of(self, cid, rid):
        """[(feature id, entitlement dict, subscription)] in plan order; overrides last."""
        c = self.customer(cid, rid)
        seen = collections.OrderedDict()
        for sub in self.active_subscriptions(c, rid):
            for fid, e in self.plans[sub["plan"]].get("entitlements", {}).items():
                if fid not in seen:
                    seen[fid] = (dict(e), sub)
        for fid, e in c.get("entitlementOverrides", {}).items():
            if fid not in seen and e.get("denied"):
                continue        # nothing to deny in this scope
            base = seen.get(fid, ({}, None))
            merged = dict(base[0])
            merged.update(e)
            seen[fid] = (merged, base[1])
        return [(fid, e, sub) for fid, (e, sub) in seen.items()]

    def period_key(self, cid, rid, fid, at=None):
        """The reset period of (customer, resource, feature) around at (default now), or None."""
        try:
            for f, e, sub in self.entitlements_of(cid, rid):
                if f == fid and e.get("resetPeriod"):
                    anchor = parse_time(sub.get("startDate")) if sub else None
                    anchor = anchor or parse_time("2020-01-01T00:00:00Z")
                    return current_period(anchor, e["resetPeriod"], at or self.now())
        except DenyError:
            pass
        return None

    def current_usage(self, cid, rid, fid):
        key = (cid, rid or "", fid)
        period = self.period_key(cid, rid, fid)
        entry = self.usage.get(key)
        if entry is None:
            return 0.0, period
        if entry[1] != period:
            # the period the usage was counted in has ended
            entry[0], entry[1] = 0.0, period
        return entry[0], period


# ---------------------------------------------------------------- the service


class Sidecar:
    def __init__(self, store, pb):
        self.store = store
        self.pb = pb
        self.stats_lock = threading.Lock()
        self.calls = collections.Counter()
        self.received = collections.deque(maxlen=100000)
        self.peers = set()
        self.faults = []

    # -- messages

    def feature_msg(self, fid):
        f = self.store.features[fid]
        pb = self.pb
        meter = f.get("meterType", "NONE")
        return pb.EntitlementFeature(
            id=fid,
            feature_type=pb.FeatureType.Value("FEATURE_TYPE_" + f["type"]),
            units=f.get("units", ""),
            units_plural=f.get("unitsPlural", ""),
            meter_type=pb.MeterType.Value("METER_TYPE_" + meter),
            is_metered=(f["type"] == "NUMBER" and meter != "NONE"))

    def kind(self, fid):
        f = self.store.features[fid]
        if f["type"] == "BOOLEAN":
            return "boolean"
        if f["type"] == "ENUM":
            return "enum"
        return "metered" if f.get("meterType", "NONE") != "NONE" else "numeric"

    def entitlement_msg(self, cid, rid, fid, e):
        pb = self.pb
        kind = self.kind(fid)
        feature = self.feature_msg(fid)
        if kind == "boolean":
            return kind, pb.BooleanEntitlement(feature=feature)
        if kind == "numeric":
            m = pb.NumericEntitlement(feature=feature, is_unlimited=bool(e.get("isUnlimited")))
            if not e.get("isUnlimited") and e.get("value") is not None:
                m.value = int(e["value"])
            return kind, m
        if kind == "enum":
            return kind, pb.EnumEntitlement(feature=feature, enum_values=e.get("enumValues", []))
        usage, period = self.store.current_usage(cid, rid, fid)
        m = pb.MeteredEntitlement(feature=feature, is_unlimited=bool(e.get("isUnlimited")),
                                  current_usage=usage)
        if not e.get("isUnlimited") and e.get("usageLimit") is not None:
            m.usage_limit = float(e["usageLimit"])
        if e.get("softLimit"):
            m.has_soft_limit = True
        if period is not None:
            m.reset_period = pb.EntitlementResetPeriod.Value(
                "ENTITLEMENT_RESET_PERIOD_" + e["resetPeriod"])
            m.usage_period_start.FromDatetime(period[0].replace(tzinfo=None))
            m.usage_period_end.FromDatetime(period[1].replace(tzinfo=None))
            m.next_reset_date.FromDatetime(period[1].replace(tzinfo=None))
            m.usage_period_anchor.FromDatetime(period[0].replace(tzinfo=None))
        else:
            m.reset_period = pb.ENTITLEMENT_RESET_PERIOD_UNSPECIFIED
        return kind, m

    def decide(self, cid, rid, fid, want=None, requested_usage=None, requested_values=()):
        """(has_access, reason or None, kind, entitlement message or None)."""
        st = self.store
        try:
            st.customer(cid, rid)
            if fid not in st.features:
                raise DenyError("FEATURE_NOT_FOUND")
            found = [e for f, e, _ in st.entitlements_of(cid, rid) if f == fid]
            if not found:
                raise DenyError("NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION")
        except DenyError as d:
            return False, d.reason, None, None
        e = found[0]
        kind, msg = self.entitlement_msg(cid, rid, fid, e)
        if want is not None and kind != want:
            return False, "FEATURE_TYPE_MISMATCH", kind, None
        if e.get("denied"):
            # in the plan but switched off without a reason (the guide's
            # boolean "no access" example)
            return False, None, kind, msg
        if kind == "enum":
            allowed = set(e.get("enumValues", []))
            if any(v not in allowed for v in requested_values):
                return False, "REQUESTED_VALUES_MISMATCH", kind, msg
        if kind == "metered":
            if msg.is_unlimited or e.get("softLimit"):
                return True, None, kind, msg
            limit = msg.usage_limit if msg.HasField("usage_limit") else 0.0
            if msg.current_usage + (requested_usage or 0.0) > limit:
                return False, "REQUESTED_USAGE_EXCEEDING_LIMIT", kind, msg
        return True, None, kind, msg

    def reason_value(self, reason):
        return self.pb.AccessDeniedReason.Value("ACCESS_DENIED_REASON_" + reason)

    @staticmethod
    def opt(req, field, default=None):
        return getattr(req, field) if req.HasField(field) else default

    def typed(self, req, want, resp_cls, requested_usage=None, requested_values=()):
        rid = self.opt(req, "resource_id")
        with self.store.lock:
            ok, reason, kind, msg = self.decide(req.customer_id, rid, req.feature_id, want,
                                                requested_usage, requested_values)
        resp = resp_cls(has_access=ok, is_fallback=False)
        if reason:
            resp.access_denied_reason = self.reason_value(reason)
        if msg is not None:
            resp.entitlement.CopyFrom(msg)
        else:
            resp.entitlement.SetInParent()
            if kind is not None:
                resp.entitlement.feature.CopyFrom(self.feature_msg(req.feature_id))
            if want == "metered":
                resp.entitlement.reset_period = self.pb.ENTITLEMENT_RESET_PERIOD_UNSPECIFIED
        return resp

    # -- read methods

    def GetBooleanEntitlement(self, req, ctx):
        return self.typed(req, "boolean", self.pb.GetBooleanEntitlementResponse)

    def GetNumericEntitlement(self, req, ctx):
        return self.typed(req, "numeric", self.pb.GetNumericEntitlementResponse)

    def GetMeteredEntitlement(self, req, ctx):
        requested = req.options.requested_usage if req.options.HasField("requested_usage") else 0.0
        resp = self.typed(req, "metered", self.pb.GetMeteredEntitlementResponse,
                          requested_usage=requested)
        resp.requested_usage = requested
        return resp

    def GetEnumEntitlement(self, req, ctx):
        values = list(req.options.requested_values)
        resp = self.typed(req, "enum", self.pb.GetEnumEntitlementResponse,
                          requested_values=values)
        resp.requested_values.extend(values)
        return resp

    def _generic(self, req, feature_id, resp):
        rid = self.opt(req, "resource_id")
        usage = req.options.requested_usage if req.options.HasField("requested_usage") else 0.0
        with self.store.lock:
            ok, reason, kind, msg = self.decide(req.customer_id, rid, feature_id, None,
                                                usage, list(req.options.requested_values))
        resp.has_access = ok
        if reason:
            resp.access_denied_reason = self.reason_value(reason)
        if msg is not None:
            getattr(resp, kind).CopyFrom(msg)
        return resp

    def GetEntitlement(self, req, ctx):
        return self._generic(req, req.feature_id, self.pb.GetEntitlementResponse())

    def GetEntitlementV2(self, req, ctx):
        resp = self.pb.GetEntitlementV2Response()
        if not req.HasField("feature_id"):
            # credits are not modelled by the dev sidecar
            resp.entitlement.has_access = False
            resp.entitlement.access_denied_reason = self.reason_value("ENTITLEMENT_NOT_FOUND")
            return resp
        self._generic(req, req.feature_id, resp.entitlement)
        return resp

    def _listing(self, req, resp, v2):
        rid = self.opt(req, "resource_id")
        with self.store.lock:
            try:
                ents = self.store.entitlements_of(req.customer_id, rid)
            except DenyError as d:
                resp.access_denied_reason = self.reason_value(d.reason)
                return resp
            for fid, e, _ in ents:
                if v2:
                    item = resp.entitlements.add()
                    ok, reason, kind, msg = self.decide(req.customer_id, rid, fid)
                    item.has_access = ok
                    if reason:
                        item.access_denied_reason = self.reason_value(reason)
                else:
                    item = resp.entitlements.add()
                    kind, msg = self.entitlement_msg(req.customer_id, rid, fid, e)
                getattr(item, kind).CopyFrom(msg)
        return resp

    def GetEntitlements(self, req, ctx):
        return self._listing(req, self.pb.GetEntitlementsResponse(), False)

    def GetEntitlementsStateV2(self, req, ctx):
        return self._listing(req, self.pb.GetEntitlementsStateV2Response(), True)

    def ReloadEntitlements(self, req, ctx):
        rid = self.opt(req, "resource_id")
        c = self.store.customers.get(req.customer_id)
        exists = c is not None and (rid is None or rid in c.get("resources", []))
        return self.pb.ReloadEntitlementsResponse(entitled_entity_exists=exists)

    # -- write methods

    def _check_usage(self, u):
        st = self.store
        if not u.customer_id:
            raise RpcError("INVALID_ARGUMENT", "customer_id is required")
        if u.customer_id not in st.customers:
            raise RpcError("NOT_FOUND", "customer %s not found" % u.customer_id)
        rid = self.opt(u, "resource_id")
        if rid is not None and rid not in st.customers[u.customer_id].get("resources", []):
            raise RpcError("NOT_FOUND", "resource %s of customer %s not found" % (rid, u.customer_id))
        f = st.features.get(u.feature_id)
        if f is None:
            raise RpcError("NOT_FOUND", "feature %s not found" % u.feature_id)
        if self.kind(u.feature_id) != "metered":
            raise RpcError("INVALID_ARGUMENT", "feature %s is not metered" % u.feature_id)
        if math.isnan(u.value) or math.isinf(u.value):
            raise RpcError("INVALID_ARGUMENT", "value must be a finite number")

    def _apply_usage(self, u):
        pb = self.pb
        rid = self.opt(u, "resource_id")
        current, period = self.store.current_usage(u.customer_id, rid, u.feature_id)
        behavior = self.opt(u, "update_behavior", pb.USAGE_UPDATE_BEHAVIOR_DELTA)
        new = u.value if behavior == pb.USAGE_UPDATE_BEHAVIOR_SET else current + u.value
        self.store.usage[(u.customer_id, rid or "", u.feature_id)] = [new, period]
        mid = str(uuid.uuid4())
        dims = {k: getattr(v, v.WhichOneof("value")) for k, v in u.dimensions.items()
                if v.WhichOneof("value")}
        self.store.measurements.append({
            "measurementId": mid, "customerId": u.customer_id, "resourceId": rid,
            "featureId": u.feature_id, "value": u.value,
            "updateBehavior": pb.UsageUpdateBehavior.Name(behavior), "currentUsage": new,
            "dimensions": dims})
        resp = pb.ReportUsageResponse(measurement_id=mid, customer_id=u.customer_id,
                                      feature_id=u.feature_id, current_usage=new)
        if rid is not None:
            resp.resource_id = rid
        if period is not None:
            resp.usage_period_start.FromDatetime(period[0].replace(tzinfo=None))
            resp.usage_period_end.FromDatetime(period[1].replace(tzinfo=None))
        return resp

    def ReportUsage(self, req, ctx):
        with self.store.lock:
            self._check_usage(req)
            return self._apply_usage(req)

    def ReportUsageBulk(self, req, ctx):
        with self.store.lock:
            for u in req.usages:
                self._check_usage(u)
            resp = self.pb.ReportUsageBulkResponse()
            for u in req.usages:
                resp.usages.add().CopyFrom(self._apply_usage(u))
            return resp

    def ReportEvents(self, req, ctx):
        from google.protobuf import empty_pb2
        st = self.store
        with st.lock:
            for ev in req.events:
                if not ev.idempotency_key:
                    raise RpcError("INVALID_ARGUMENT", "idempotency_key is required")
                if not ev.event_name or not ev.customer_id:
                    raise RpcError("INVALID_ARGUMENT", "event_name and customer_id are required")
            for ev in req.events:
                if ev.idempotency_key in st.events_accepted:
                    st.event_duplicates += 1
                    continue
                dims = {}
                for k, v in ev.dimensions.items():
                    dims[k] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
                rid = self.opt(ev, "resource_id")
                st.events_accepted[ev.idempotency_key] = {
                    "eventName": ev.event_name, "customerId": ev.customer_id,
                    "resourceId": rid, "dimensions": dims}
                self._meter_event(ev.customer_id, rid, ev.event_name, dims)
        return empty_pb2.Empty()

    def _meter_event(self, cid, rid, name, dims):
        """Raw events feed features whose "events" name them: COUNT or SUM of a dimension."""
        for fid, f in self.store.features.items():
            spec = f.get("events")
            if not spec or spec.get("eventName") != name or cid not in self.store.customers:
                continue
            amount = 1.0
            if spec.get("aggregation", "COUNT") == "SUM":
                amount = float(dims.get(spec.get("dimension"), 0) or 0)
            current, period = self.store.current_usage(cid, rid, fid)
            self.store.usage[(cid, rid or "", fid)] = [current + amount, period]


# ---------------------------------------------------------------- faults and plumbing

class Faults:
    """Failure injection rules, applied in order to matching calls.

    A rule: {"method": "*" or a method name, "action": one of delay, hang,
    error, garbage, oversize, "ms": for delay, "code"/"message": for error,
    "times": how many calls it applies to (omit for all)}.
    """

    ACTIONS = ("delay", "hang", "error", "garbage", "oversize")

    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []

    def set(self, rules):
        for r in rules:
            if r.get("action") not in self.ACTIONS:
                raise ValueError("fault action must be one of %s" % (self.ACTIONS,))
        with self.lock:
            self.rules = [dict(r) for r in rules]

    def add(self, rule):
        self.set(self.rules + [rule])

    def take(self, method):
        """The rules that apply to this call; counted rules are used up."""
        out = []
        with self.lock:
            for r in self.rules:
                if r.get("method", "*") not in ("*", method):
                    continue
                out.append(dict(r))
                if "times" in r:
                    r["times"] -= 1
            self.rules = [r for r in self.rules if r.get("times", 1) > 0]
        return out


GARBAGE = b"\x0f\xff\xffnot a protobuf message\xff"


def oversize_reply():
    # unknown field 15, length-delimited: 5 MiB of filler
    n = 5 * 1024 * 1024
    out = bytearray(b"\x7a")
    v = n
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out) + b"x" * n


def build_server(args, store, pb):
    import grpc
    from google.protobuf import json_format

    sidecar = Sidecar(store, pb)
    faults = Faults()
    for f in args.fault or []:
        faults.add(json.loads(f))

    methods = {
        "GetEntitlements": pb.GetEntitlementsRequest,
        "GetEntitlement": pb.GetEntitlementRequest,
        "GetBooleanEntitlement": pb.GetBooleanEntitlementRequest,
        "GetNumericEntitlement": pb.GetNumericEntitlementRequest,
        "GetMeteredEntitlement": pb.GetMeteredEntitlementRequest,
        "GetEnumEntitlement": pb.GetEnumEntitlementRequest,
        "ReportUsage": pb.ReportUsageRequest,
        "ReportEvents": pb.ReportEventsRequest,
        "ReloadEntitlements": pb.ReloadEntitlementsRequest,
        "ReportUsageBulk": pb.ReportUsageBulkRequest,
        "GetEntitlementV2": pb.GetEntitlementV2Request,
        "GetEntitlementsStateV2": pb.GetEntitlementsStateV2Request,
    }

    def serialize(msg):
        return msg if isinstance(msg, bytes) else msg.SerializeToString()

    def make_handler(name):
        impl = getattr(sidecar, name)

        def handler(req, ctx):
            with sidecar.stats_lock:
                sidecar.calls[name] += 1
                sidecar.peers.add(ctx.peer())
                sidecar.received.append({
                    "method": name, "peer": ctx.peer(),
                    "request": json_format.MessageToDict(req, preserving_proto_field_name=True)})
            for rule in faults.take(name):
                action = rule["action"]
                if action == "delay":
                    time.sleep(rule.get("ms", 100) / 1000.0)
                elif action == "hang":
                    deadline = time.monotonic() + rule.get("ms", 600000) / 1000.0
                    while ctx.is_active() and time.monotonic() < deadline:
                        time.sleep(0.02)
                    return GARBAGE if not ctx.is_active() else pb_empty_reply(name)
                elif action == "error":
                    ctx.abort(getattr(grpc.StatusCode, rule.get("code", "UNAVAILABLE")),
                              rule.get("message", "injected failure"))
                elif action == "garbage":
                    return GARBAGE
                elif action == "oversize":
                    return oversize_reply()
            try:
                return impl(req, ctx)
            except RpcError as e:
                ctx.abort(getattr(grpc.StatusCode, e.code), e.message)

        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=methods[name].FromString,
            response_serializer=serialize)

    def pb_empty_reply(name):
        return b""

    handlers = {name: make_handler(name) for name in methods}
    from concurrent import futures
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = "%s:%d" % (args.host, args.port)
    if args.tls_cert:
        with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit("could not listen on %s" % address)
    return server, port, sidecar, faults


def build_control(args, store, sidecar, faults, stop_event):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    class Control(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def reply(self, code, obj):
            body = json.dumps(obj, indent=1).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path in ("/livez", "/readyz"):
                return self.reply(200, {"status": "UP"})
            if url.path == "/stats":
                with sidecar.stats_lock:
                    return self.reply(200, {"calls": dict(sidecar.calls),
                                            "peers": sorted(sidecar.peers),
                                            "apiCalls": dict(store.api_calls)})
            if url.path == "/received":
                method = q.get("method", [None])[0]
                with sidecar.stats_lock:
                    reqs = [r for r in sidecar.received if method in (None, r["method"])]
                return self.reply(200, {"count": len(reqs), "requests": reqs[-1000:]})
            if url.path == "/usage":
                with store.lock:
                    out = []
                    for (c, r, f) in sorted(store.usage):
                        value, _ = store.current_usage(c, r or None, f)
                        out.append({"customerId": c, "resourceId": r or None,
                                    "featureId": f, "currentUsage": value})
                return self.reply(200, {"usage": out, "measurements": store.measurements[-1000:],
                                        "measurementCount": len(store.measurements)})
            if url.path == "/measurements":
                # every measurement, oldest first; filters: customerId, featureId
                with store.lock:
                    out = [m for m in store.measurements
                           if all(m.get(k) == q[k][0] for k in ("customerId", "featureId") if k in q)]
                return self.reply(200, {"count": len(out), "measurements": out,
                                        "duplicateUsageKeys": store.duplicate_usage_keys})
            if url.path == "/events":
                with store.lock:
                    return self.reply(200, {"accepted": list(store.events_accepted.values()),
                                            "keys": list(store.events_accepted.keys()),
                                            "duplicates": store.event_duplicates})
            if url.path == "/faults":
                return self.reply(200, {"faults": faults.rules})
            if url.path == "/clock":
                return self.reply(200, {"now": format_time(store.now()), "fixed": store.clock is not None})
            return self.reply(404, {"error": "no such endpoint"})

        def do_POST(self):
            try:
                body = self.body()
                if self.path == "/faults":
                    faults.set(body.get("faults", []))
                elif self.path == "/faults/add":
                    faults.add(body)
                elif self.path == "/clock":
                    with store.lock:
                        if "advanceSeconds" in body:
                            store.clock = store.now() + datetime.timedelta(seconds=body["advanceSeconds"])
                        else:
                            store.clock = parse_time(body.get("now"))
                elif self.path == "/reset":
                    with sidecar.stats_lock:
                        sidecar.calls.clear()
                        sidecar.received.clear()
                        sidecar.peers.clear()
                elif self.path == "/catalog":
                    store.load(body if body else json.load(open(args.catalog)))
                elif self.path == "/shutdown":
                    self.reply(200, {"status": "stopping"})
                    stop_event.set()
                    return None
                else:
                    return self.reply(404, {"error": "no such endpoint"})
            except (ValueError, KeyError, CatalogError) as e:
                return self.reply(400, {"error": str(e)})
            return self.reply(200, {"ok": True})

        def do_DELETE(self):
            if self.path == "/faults":
                faults.set([])
                return self.reply(200, {"ok": True})
            return self.reply(404, {"error": "no such endpoint"})

    httpd = ThreadingHTTPServer((args.host, args.control_port), Control)
    httpd.daemon_threads = True
    return httpd


# ---------------------------------------------------------------- the Stigg API (GraphQL)

class GraphQL:
    """The GraphQL operations the extension calls, against the catalog.

    Operations are told apart by the field the query selects; inputs come
    from variables, as the extension sends them.
    """

    def __init__(self, store, sidecar, pb):
        self.store = store
        self.sidecar = sidecar
        self.pb = pb
        self.usage_keys = {}    # idempotency key -> the first answer

    def run(self, query, variables):
        for name in ("provisionCustomer", "provisionSubscription", "getCustomerByRefId",
                     "reportUsageBulk", "reportUsage", "reportEvent"):
            if name + "(" in query:
                with self.store.lock:
                    self.store.api_calls[name] += 1
                try:
                    return {"data": {name: getattr(self, name)(variables or {})}}
                except ValueError as e:
                    return {"data": None, "errors": [{"message": str(e), "path": [name]}]}
        return {"data": None, "errors": [{"message": "Cannot query field: the dev sidecar serves "
                                          "provisionCustomer, provisionSubscription and getCustomerByRefId"}]}

    def _subscribe(self, cust, plan, resource):
        st = self.store
        if plan not in st.plans:
            raise ValueError("Plan not found: %s" % plan)
        if resource and resource not in cust.setdefault("resources", []):
            cust["resources"].append(resource)
        sub = {"plan": plan, "status": "ACTIVE", "startDate": format_time(st.now()),
               "subscriptionId": "subscription-" + uuid.uuid4().hex[:12]}
        if resource:
            sub["resource"] = resource
        # a new subscription for the same scope replaces the old one
        cust["subscriptions"] = [s for s in cust.get("subscriptions", [])
                                 if (s.get("resource") or None) != (resource or None)] + [sub]
        return sub

    def provisionCustomer(self, v):
        inp = v.get("input") or {}
        cid = inp.get("customerId")
        if not cid:
            raise ValueError("customerId is required")
        with self.store.lock:
            cust = self.store.customers.setdefault(cid, {"subscriptions": [], "resources": []})
            for k in ("name", "email"):
                if inp.get(k) is not None:
                    cust[k] = inp[k]
            sub = None
            params = inp.get("subscriptionParams")
            if params:
                sub = self._subscribe(cust, params.get("planId"), params.get("resourceId"))
            return {"customer": {"customerId": cid, "name": cust.get("name"), "email": cust.get("email")},
                    "subscriptionDecisionStrategy": "REQUESTED_PLAN" if sub else "PREDEFINED_FREE_PLAN",
                    "subscription": {"subscriptionId": sub["subscriptionId"], "status": "ACTIVE",
                                     "plan": {"refId": sub["plan"]}} if sub else None}

    def provisionSubscription(self, v):
        inp = v.get("input") or {}
        cid, plan = inp.get("customerId"), inp.get("planId")
        if not cid or not plan:
            raise ValueError("customerId and planId are required")
        with self.store.lock:
            cust = self.store.customers.get(cid)
            if cust is None:
                raise ValueError("Customer not found: %s" % cid)
            sub = self._subscribe(cust, plan, inp.get("resourceId"))
            ents = [{"feature": {"refId": f}, "hasAccess": True, "usageLimit": e.get("usageLimit")}
                    for f, e in self.store.plans[plan].get("entitlements", {}).items()]
            return {"status": "SUCCESS", "checkoutUrl": None,
                    "subscription": {"subscriptionId": sub["subscriptionId"], "status": "ACTIVE",
                                     "resource": {"resourceId": sub["resource"]} if sub.get("resource") else None,
                                     "plan": {"refId": plan}},
                    "entitlements": ents}

    def reportUsageBulk(self, v):
        """Usage with idempotency keys: a key seen before returns its first answer."""
        pb = self.pb
        usages = ((v.get("input") or {}).get("usages")) or []
        reqs = []
        for u in usages:
            if not u.get("idempotencyKey"):
                raise ValueError("idempotencyKey is required")
            r = pb.ReportUsageRequest(customer_id=u.get("customerId") or "", feature_id=u.get("featureId") or "",
                                      value=float(u.get("value", 0)))
            if u.get("resourceId"):
                r.resource_id = u["resourceId"]
            r.update_behavior = (pb.USAGE_UPDATE_BEHAVIOR_SET if u.get("updateBehavior") == "SET"
                                 else pb.USAGE_UPDATE_BEHAVIOR_DELTA)
            for k, val in (u.get("dimensions") or {}).items():
                if isinstance(val, bool):
                    r.dimensions[k].boolean_value = val
                elif isinstance(val, (int, float)):
                    r.dimensions[k].number_value = val
                else:
                    r.dimensions[k].string_value = str(val)
            reqs.append((u["idempotencyKey"], r))
        out = []
        with self.store.lock:
            for key, r in reqs:
                if key not in self.usage_keys:
                    try:
                        self.sidecar._check_usage(r)
                    except RpcError as e:
                        raise ValueError(e.message)
            for key, r in reqs:
                if key in self.usage_keys:
                    self.store.duplicate_usage_keys += 1
                else:
                    resp = self.sidecar._apply_usage(r)
                    self.usage_keys[key] = {"id": resp.measurement_id, "featureId": r.feature_id,
                                            "customerId": r.customer_id, "currentUsage": resp.current_usage}
                out.append(self.usage_keys[key])
        return out

    def reportUsage(self, v):
        """One usage, deduplicated by its idempotency key like the bulk form."""
        return self.reportUsageBulk({"input": {"usages": [v.get("input") or {}]}})[0]

    def reportEvent(self, v):
        pb = self.pb
        events = ((v.get("events") or {}).get("usageEvents")) or []
        req = pb.ReportEventsRequest()
        for e in events:
            ev = req.events.add(event_name=e.get("eventName") or "", customer_id=e.get("customerId") or "",
                                idempotency_key=e.get("idempotencyKey") or "")
            if e.get("resourceId"):
                ev.resource_id = e["resourceId"]
            for k, val in (e.get("dimensions") or {}).items():
                if isinstance(val, bool):
                    ev.dimensions[k].boolean_value = val
                elif isinstance(val, (int, float)):
                    ev.dimensions[k].number_value = val
                else:
                    ev.dimensions[k].string_value = str(val)
        try:
            self.sidecar.ReportEvents(req, None)
        except RpcError as e:
            raise ValueError(e.message)
        return True

    def getCustomerByRefId(self, v):
        cid = (v.get("input") or {}).get("customerId") or v.get("customerId") or v.get("id")
        cust = self.store.customers.get(cid)
        if cust is None:
            return None
        return {"customerId": cid, "name": cust.get("name"), "email": cust.get("email")}


def build_api(args, store, sidecar, faults, pb):
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    gql = GraphQL(store, sidecar, pb)

    class Api(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def reply(self, code, payload):
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            if self.path != "/graphql":
                return self.reply(404, {"errors": [{"message": "not found"}]})
            if self.headers.get("X-API-KEY") != args.api_key:
                return self.reply(401, {"errors": [{"message": "Unauthorized"}]})
            for rule in faults.take("graphql"):
                action = rule["action"]
                if action == "delay":
                    time.sleep(rule.get("ms", 100) / 1000.0)
                elif action == "hang":
                    time.sleep(rule.get("ms", 600000) / 1000.0)
                    return None
                elif action == "error":
                    return self.reply(200, {"data": None, "errors": [
                        {"message": rule.get("message", "injected failure")},
                        {"message": "a second error"}]})
                elif action == "garbage":
                    return self.reply(200, b"<html>not json</html>")
                elif action == "oversize":
                    return self.reply(200, b"[" + b"0," * (9 * 1024 * 1024) + b"0]")
            try:
                req = json.loads(raw)
            except ValueError:
                return self.reply(400, {"errors": [{"message": "body is not JSON"}]})
            self.reply(200, gql.run(req.get("query", ""), req.get("variables")))

    httpd = ThreadingHTTPServer((args.host, args.api_port), Api)
    httpd.daemon_threads = True
    if args.api_tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.api_tls_cert, args.api_tls_key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    return httpd


def main():
    ap = argparse.ArgumentParser(description="Stigg dev sidecar (gRPC, stigg.sidecar.v1)")
    ap.add_argument("--catalog", required=True, help="JSON catalog to serve")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="gRPC port (0: a free one)")
    ap.add_argument("--control-port", type=int, default=0, help="HTTP control port (0: a free one)")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--fault", action="append", help="a failure rule as JSON (repeatable)")
    ap.add_argument("--api-port", type=int, default=0, help="Stigg API (GraphQL) port (0: a free one)")
    ap.add_argument("--api-key", default="dev-server-key", help="the server key the API accepts")
    ap.add_argument("--api-tls-cert")
    ap.add_argument("--api-tls-key")
    ap.add_argument("--daemon", action="store_true", help="detach once ready")
    ap.add_argument("--log-file", default=os.devnull)
    args = ap.parse_args()

    try:
        with open(args.catalog) as f:
            catalog = json.load(f)
        store = Store(catalog)
    except (OSError, ValueError, CatalogError) as e:
        print("stigg-dev-sidecar: bad catalog %s: %s" % (args.catalog, e), file=sys.stderr)
        return 2

    ready_w = None
    if args.daemon:
        # fork before grpc is imported: grpc's threads do not survive fork
        r, w = os.pipe()
        if os.fork() > 0:
            os.close(w)
            line = os.fdopen(r).readline()
            if not line.startswith("READY"):
                sys.stderr.write(line or "stigg-dev-sidecar: failed to start; see %s\n" % args.log_file)
                return 1
            sys.stdout.write(line)
            return 0
        os.close(r)
        os.setsid()
        ready_w = os.fdopen(w, "w")
        log = open(args.log_file, "a")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        devnull = open(os.devnull)
        os.dup2(devnull.fileno(), 0)

    try:
        import sidecar_pb2 as pb
        server, port, sidecar, faults = build_server(args, store, pb)
        stop_event = threading.Event()
        httpd = build_control(args, store, sidecar, faults, stop_event)
        api = build_api(args, store, sidecar, faults, pb)
    except BaseException as e:
        msg = "stigg-dev-sidecar: failed to start: %s\n" % e
        (ready_w or sys.stderr).write(msg)
        return 1
    server.start()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threading.Thread(target=api.serve_forever, daemon=True).start()

    import signal
    signal.signal(signal.SIGTERM, lambda *a: stop_event.set())
    signal.signal(signal.SIGINT, lambda *a: stop_event.set())

    line = "READY grpc_port=%d control_port=%d pid=%d api_port=%d\n" % (
        port, httpd.server_address[1], os.getpid(), api.server_address[1])
    if ready_w:
        ready_w.write(line)
        ready_w.close()
    sys.stdout.write(line)
    sys.stdout.flush()

    while not stop_event.wait(1.0):
        pass
    server.stop(0).wait()
    httpd.shutdown()
    api.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
