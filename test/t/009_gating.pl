# Gating: the entitlement cache (hit, expiry, statement dedupe, invalidation,
# eviction), checks that count usage Stigg has not acknowledged, the race of
# sixteen sessions for the last units, both trigger functions, and an RLS
# policy.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use StiggSidecar;

my $sc = StiggSidecar->start;
my $node = StiggSidecar->new_node('gating', $sc, max_connections => 40);
sub sql { return $node->safe_psql('postgres', $_[0]); }
sub calls { return $sc->calls('GetEntitlement'); }

my $check = q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')};

# ---- cache: hit, expiry, invalidation
{
	$sc->reset_stats;
	sql($check) for 1 .. 3;
	is(calls(), 1, 'three checks in three sessions, one sidecar call (shared cache)');
	sql("SET stigg.cache_ttl = '100ms'; $check; SELECT pg_sleep(0.2); $check");
	is(calls(), 2, 'an entry older than stigg.cache_ttl is asked again');
	is(sql("SELECT stigg_cache_invalidate('customer-demo-01')") > 0 ? 1 : 0, 1, 'invalidate by customer');
	sql($check);
	is(calls(), 3, 'after invalidation the sidecar is asked again');
	sql(q{SELECT stigg_reload_entitlements('customer-demo-01')});
	sql($check);
	is(calls(), 4, 'stigg_reload_entitlements invalidates too');
	sql('SELECT stigg_cache_invalidate()');
}

# ---- one statement asks once per key, even with the cache off
{
	$sc->reset_stats;
	is(sql(q{SET stigg.cache_ttl = 0;
	         SELECT count(*) FROM generate_series(1, 3000) g
	          WHERE stigg_has_access(CASE g % 3 WHEN 0 THEN 'customer-demo-01' WHEN 1 THEN 'customer-demo-02'
	                                 ELSE 'customer-enterprise' END, 'feature-04-analytics')}), '2000',
		'3000 checks answered');
	is(calls(), 3, 'the sidecar was asked once per customer');
	sql(q{SET stigg.cache_ttl = 0; } . $check . '; ' . $check);
	is(calls(), 5, 'with the cache off, each statement asks');
}

# ---- usage not yet acknowledged counts, the caller's own included
{
	my $q = q{SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 1)};
	is(sql($q), 't', '3 of 6: one more fits');
	is(sql(qq{BEGIN; SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 3); $q; ROLLBACK;}),
		"1\nf", "the transaction's own 3 uncommitted units count");
	is(sql($q), 't', 'released by the rollback');
	sql(q{SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 6, 'set')});
	is(sql($q), 'f', 'a queued SET counts before Stigg acknowledges it');
	sql(q{SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 3, 'set'); SELECT stigg_flush()});
	is(sql($q), 't', 'and after the acknowledgement the cached usage is Stigg\'s');
	my ($u) = grep { $_->{customerId} eq 'customer-demo-01' && $_->{featureId} eq 'feature-01-templates' && !$_->{resourceId} }
	  @{ $sc->usage->{usage} };
	is($u->{currentUsage}, 3, 'the sidecar agrees: 3');
}

# ---- the race: sixteen sessions, three units left, exactly three admitted
sql(q{CREATE TABLE templates (id serial PRIMARY KEY, customer_id text NOT NULL, name text);
      CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON templates
        FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-01-templates', 'customer_id');
      CREATE TRIGGER meter AFTER INSERT OR UPDATE OR DELETE ON templates
        FOR EACH ROW EXECUTE FUNCTION stigg_track_usage('feature-01-templates', 'customer_id');});
my $catalog = decode_json(slurp_file(StiggSidecar::default_catalog()));
my $script = PostgreSQL::Test::Utils::tempdir . '/insert.sql';
PostgreSQL::Test::Utils::append_to_file($script,
	"INSERT INTO templates (customer_id, name) VALUES ('customer-demo-01', 'race');\n");
for my $round (1 .. ($ENV{STIGG_RACE_ROUNDS} // 5))
{
	# back to 3 of 6 at the sidecar, nothing queued, nothing cached
	sql('SELECT stigg_flush()');
	$sc->post('/catalog', $catalog);
	sql('TRUNCATE templates; DELETE FROM stigg.usage_queue; SELECT stigg_cache_invalidate()');
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'pgbench', '-n', '-c', '16', '-j', '16', '-t', '1', '-f', $script,
			'-h', $node->host, '-p', $node->port, 'postgres' ], '>', \$out, '2>', \$err);
	my $denied = () = $err =~ /SG001|has reached the limit/g;
	is(sql('SELECT count(*) FROM templates'), '3', "round $round: exactly 3 of 16 inserts admitted");
	cmp_ok($denied, '>=', 13, "round $round: the others were refused with the limit error");
	sql('SELECT stigg_flush()');
	my ($u) = grep { $_->{customerId} eq 'customer-demo-01' && $_->{featureId} eq 'feature-01-templates' && !$_->{resourceId} }
	  @{ $sc->usage->{usage} };
	is($u->{currentUsage}, 6, "round $round: Stigg ends at 6 of 6");
}

# ---- stigg_enforce and stigg_track_usage, row level
sql(q{TRUNCATE templates; DELETE FROM stigg.usage_queue; SELECT stigg_cache_invalidate()});
$sc->post('/catalog', $catalog);
sub queued
{
	return sql(q{SELECT coalesce(string_agg(customer_id || ':' || coalesce(resource_id, '-') || ':' || value, ' ' ORDER BY id), '')
	               FROM stigg.usage_queue WHERE feature_id = 'feature-02-campaigns'});
}
sql(q{CREATE TABLE campaigns (id int PRIMARY KEY, customer_id text, site text, size int);
      CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON campaigns
        FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-02-campaigns', 'customer_id', '', 'size');
      CREATE TRIGGER meter AFTER INSERT OR UPDATE OR DELETE ON campaigns
        FOR EACH ROW EXECUTE FUNCTION stigg_track_usage('feature-02-campaigns', 'customer_id', '', 'size');});
sql(q{INSERT INTO campaigns VALUES (1, 'customer-demo-01', NULL, 10), (2, 'customer-demo-01', NULL, 20)});
is(queued(), 'customer-demo-01:-:10 customer-demo-01:-:20', 'insert reports +quantity per row');
my ($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO campaigns VALUES (3, 'customer-demo-01', NULL, 3)});
like($err, qr/has reached the limit of feature "feature-02-campaigns"/, '30 + 3 of 32 refused');
like($err, qr/Usage would be 33 of 32: 30 in use/, 'the message has the numbers');
sql(q{UPDATE campaigns SET size = 12 WHERE id = 1});
is(queued(), 'customer-demo-01:-:10 customer-demo-01:-:20 customer-demo-01:-:2', 'an update reports the difference');
sql(q{UPDATE campaigns SET customer_id = 'customer-enterprise' WHERE id = 2});
is(queued(), 'customer-demo-01:-:10 customer-demo-01:-:20 customer-demo-01:-:2 customer-demo-01:-:-20 customer-enterprise:-:20',
	'moving a row between customers reports both sides');
sql(q{DELETE FROM campaigns WHERE id = 1});
like(queued(), qr/customer-demo-01:-:-12$/, 'delete reports -quantity');
sql(q{UPDATE campaigns SET size = 10 WHERE id = 2});
like(queued(), qr/customer-enterprise:-:-10$/, 'a smaller quantity is no check and reports the decrease');

# ---- statement level with transition tables
sql(q{CREATE TABLE events_log (customer_id text, n int);
      CREATE TRIGGER ins AFTER INSERT ON events_log REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION stigg_track_usage('feature-09-api-calls', 'customer_id', '', 'n');
      CREATE TRIGGER upd AFTER UPDATE ON events_log REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION stigg_track_usage('feature-09-api-calls', 'customer_id', '', 'n');
      CREATE TRIGGER del AFTER DELETE ON events_log REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION stigg_track_usage('feature-09-api-calls', 'customer_id', '', 'n');});
sub api_queued
{
	return sql(q{SELECT string_agg(customer_id || ':' || value, ' ' ORDER BY id) FROM stigg.usage_queue
	              WHERE feature_id = 'feature-09-api-calls' AND id > coalesce((SELECT max(id) FROM stigg.usage_queue
	                WHERE feature_id <> 'feature-09-api-calls'), 0)});
}
my $before = sql('SELECT max(id) FROM stigg.usage_queue');
sql(q{INSERT INTO events_log SELECT CASE WHEN g % 4 = 0 THEN 'customer-demo-02' ELSE 'customer-enterprise' END, 1
        FROM generate_series(1, 100000) g});
is(sql("SELECT string_agg(customer_id || ':' || value, ' ' ORDER BY id) FROM stigg.usage_queue WHERE id > $before"),
	'customer-enterprise:75000 customer-demo-02:25000', '100000 rows, one queue row per customer');
$before = sql('SELECT max(id) FROM stigg.usage_queue');
sql(q{UPDATE events_log SET n = 2 WHERE customer_id = 'customer-demo-02'});
is(sql("SELECT string_agg(customer_id || ':' || value, ' ' ORDER BY id) FROM stigg.usage_queue WHERE id > $before"),
	'customer-demo-02:25000', 'a statement-level update reports the net change');
$before = sql('SELECT max(id) FROM stigg.usage_queue');
sql(q{DELETE FROM events_log WHERE customer_id = 'customer-enterprise'});
is(sql("SELECT string_agg(customer_id || ':' || value, ' ' ORDER BY id) FROM stigg.usage_queue WHERE id > $before"),
	'customer-enterprise:-75000', 'a statement-level delete reports the decrease');

# ---- bad arguments, renamed columns
sub err_of { my ($r, $o, $e) = $node->psql('postgres', "\\set VERBOSITY verbose\n$_[0]"); return $e; }
sql(q{CREATE TABLE t (c text, q text, n int)});
like(err_of(q{CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-01-templates', 'nope')}),
	qr/42703: stigg_enforce: column "nope" does not exist in table public.t/,
	'a wrong column name: refused at CREATE TRIGGER');
like(err_of(q{CREATE TRIGGER a AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_track_usage('f', 'c', 'nope')}),
	qr/column "nope" does not exist/, 'a wrong resource column too');
sql(q{CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-01-templates', 'c', '', 'q')});
like(err_of(q{INSERT INTO t VALUES ('customer-demo-01')}), qr/quantity column "q" must be numeric, not text/, 'a non-numeric quantity column');
sql(q{DROP TRIGGER a ON t; CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-01-templates')});
like(err_of(q{INSERT INTO t VALUES ('customer-demo-01')}), qr/takes 2 to 4 arguments/, 'too few arguments');
sql(q{DROP TRIGGER a ON t; CREATE TRIGGER a AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-01-templates', 'c')});
like(err_of(q{INSERT INTO t VALUES ('customer-demo-01')}), qr/must be a BEFORE INSERT or UPDATE trigger FOR EACH ROW/, 'wrong timing');
sql(q{DROP TRIGGER a ON t; CREATE TRIGGER a AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION stigg_track_usage('feature-01-templates', 'c')});
like(err_of(q{INSERT INTO t VALUES ('customer-demo-01')}), qr/needs transition tables/, 'statement level without transition tables');
sql(q{DROP TRIGGER a ON t; CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-04-analytics', 'c')});
like(err_of(q{INSERT INTO t VALUES (NULL)}), qr/22004: stigg_enforce: the customer column "c" is null/, 'a NULL customer');
like(err_of(q{INSERT INTO t VALUES ('customer-demo-02'); INSERT INTO t VALUES ('customer-nobody')}),
	qr/SG001: customer "customer-nobody" is not entitled to feature "feature-04-analytics"\n.*Stigg's reason: ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND/,
	'a boolean feature denied, with the reason');

# renamed columns: the triggers keep working
sql(q{CREATE TABLE r (cust text, qty int);
      CREATE TRIGGER g BEFORE INSERT ON r FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-02-campaigns', 'cust', '', 'qty');
      CREATE TRIGGER m AFTER INSERT ON r FOR EACH ROW EXECUTE FUNCTION stigg_track_usage('feature-02-campaigns', 'cust', '', 'qty');
      ALTER TABLE r RENAME COLUMN cust TO customer_id;
      ALTER TABLE r RENAME COLUMN qty TO size;
      INSERT INTO r VALUES ('customer-enterprise', 4);});
like(queued(), qr/customer-enterprise:-:4$/, 'after renaming its columns, the trigger still reports');
like(err_of(q{INSERT INTO r VALUES ('customer-enterprise', 100)}), qr/SG001/, 'and still enforces');

my $evil = q{x'); DROP TABLE t; --};
(my $quoted = $evil) =~ s/'/''/g;
like(err_of(qq{CREATE TRIGGER e BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-04-analytics', '$quoted')}),
	qr/column "x'\); DROP TABLE t; --" does not exist/, 'an argument is a name, never SQL');
is(sql(q{SELECT count(*) FROM pg_class WHERE relname = 't'}), '1', 'the table is still there');
sql(q{ALTER TABLE t RENAME COLUMN c TO customer});

# ---- stigg.enforce = off, for superusers only
sql(q{DROP TRIGGER a ON t; CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-03-custom-domain', 'customer')});
like(err_of(q{INSERT INTO t VALUES ('customer-demo-01')}), qr/SG001/, 'custom domain denied');
is(sql(q{SET stigg.enforce = off; INSERT INTO t VALUES ('customer-demo-01'); SELECT count(*) FROM t WHERE customer = 'customer-demo-01'}),
	'1', 'stigg.enforce = off lets a restore through');
sql(q{CREATE ROLE app LOGIN; GRANT ALL ON t TO app});
like(err_of(q{SET ROLE app; SET stigg.enforce = off}), qr/permission denied to set parameter "stigg.enforce"/,
	'only superusers may switch enforcement off');

# ---- an RLS policy: each customer row visible only with the feature
{
	sql(q{CREATE TABLE reports (customer_id text, title text);
	      INSERT INTO reports SELECT c, 'r' || g FROM generate_series(1, 1000) g,
	        unnest(ARRAY['customer-demo-01', 'customer-demo-02', 'customer-nobody', 'customer-archived']) c;
	      ALTER TABLE reports ENABLE ROW LEVEL SECURITY;
	      CREATE POLICY analytics ON reports USING (stigg_has_access(customer_id, 'feature-04-analytics'));
	      GRANT SELECT ON reports TO app;
	      SELECT stigg_cache_invalidate();});
	$sc->reset_stats;
	is(sql(q{SET stigg.cache_ttl = 0; SET ROLE app;
	         SELECT string_agg(customer_id || '=' || n, ' ' ORDER BY customer_id)
	           FROM (SELECT customer_id, count(*) n FROM reports GROUP BY 1) s}),
		'customer-demo-01=1000 customer-demo-02=1000', 'the policy shows only entitled customers');
	is(calls(), 4, '4000 rows, 4 sidecar calls');
}

$node->stop;

# ---- eviction under a small stigg.cache_size
{
	my $small = StiggSidecar->new_node('small', $sc, 'stigg.cache_size' => 16);
	$sc->reset_stats;
	my @features = map { sprintf('feature-%02d', $_) } 1 .. 20;
	$small->safe_psql('postgres', join(';', map { "SELECT stigg_has_access('customer-demo-01', '$_')" } @features));
	is($sc->calls('GetEntitlement'), 20, '20 keys, 20 calls');
	$small->safe_psql('postgres', "SELECT stigg_has_access('customer-demo-01', '$features[-1]')");
	is($sc->calls('GetEntitlement'), 20, 'the newest key is still cached');
	$small->safe_psql('postgres', "SELECT stigg_has_access('customer-demo-01', '$features[0]')");
	is($sc->calls('GetEntitlement'), 21, 'the oldest was evicted');
	$small->stop;
}

$sc->stop;
done_testing();
