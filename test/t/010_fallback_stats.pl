# When the sidecar cannot answer: an error by default, never a silent false;
# with stigg.on_sidecar_error = fallback, answers from
# stigg.fallback_entitlements that say so. And the statistics views.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use StiggSidecar;

my $sc = StiggSidecar->start;
my $node = StiggSidecar->new_node('fallback', $sc);
sub sql { return $node->safe_psql('postgres', $_[0]); }
sub run
{
	my ($q) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$q");
	return ($out, $err);
}

# ---- statistics: calls, cache, round trips, latency
sql('SELECT stigg_stats_reset()');
sql(q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')}) for 1 .. 3;
my %stats = map { split /\|/ } split /\n/, sql('SELECT name, value FROM stigg.stats');
is($stats{'calls: stigg_has_access'}, 3, 'stats: three calls');
is($stats{'cache hits'}, 2, 'stats: two cache hits');
is($stats{'cache misses'}, 1, 'stats: one miss');
is($stats{'sidecar round trips'}, 1, 'stats: one round trip');
my ($trips, $p50, $p99) = split /\|/, sql('SELECT round_trips, p50_ms, p99_ms FROM stigg.stats_latency');
is($trips, 1, 'latency: one round trip');
cmp_ok($p50, '>', 0, "latency: p50 $p50 ms");
cmp_ok($p99, '>=', $p50, 'latency: p99 >= p50');
sql(q{SELECT stigg_has_access(c, 'feature-04-analytics') FROM unnest(ARRAY['a','a','b']) c});
%stats = map { split /\|/ } split /\n/, sql('SELECT name, value FROM stigg.stats');
is($stats{'statement memo hits'}, 1, 'stats: the statement memo answered the repeat');

# ---- the sidecar is down: an error, never a silent false
sql('SELECT stigg_cache_invalidate()');
$sc->stop;
my ($out, $err) = run(q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')});
like($err, qr/08006: could not connect/, 'sidecar down, no fallback: an error');
%stats = map { split /\|/ } split /\n/, sql('SELECT name, value FROM stigg.stats');
is($stats{'errors: could not connect'}, 1, 'stats: the error is counted by kind');

# ---- fallback
sql(q{INSERT INTO stigg.fallback_entitlements (feature_id, has_access, usage_limit, value, enum_values) VALUES
        ('feature-04-analytics', true, NULL, NULL, NULL),
        ('feature-01-templates', true, 10, NULL, NULL),
        ('feature-06-max-file-size', true, NULL, 50, NULL),
        ('feature-08-export-formats', true, NULL, NULL, '{csv}')});
sql(q{ALTER SYSTEM SET stigg.on_sidecar_error = 'fallback'; SELECT pg_reload_conf()});
$node->poll_query_until('postgres', q{SELECT current_setting('stigg.on_sidecar_error') = 'fallback'});

($out, $err) = run(q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics');
                     SELECT stigg_has_access('customer-demo-01', 'feature-03-custom-domain')});
is($out, "t\nf", 'fallback: the row, and the SDK default for a feature without one');
my @warnings = $err =~ /WARNING:  01000: stigg sidecar call failed; answering from stigg.fallback_entitlements/g;
is(scalar(@warnings), 1, 'one warning for two fallbacks (rate-limited)');
like($err, qr/DETAIL:  GetEntitlement: could not connect/, 'the warning says why');

is(sql(q{SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-04-analytics') @> '{"hasAccess": true, "isFallback": true}'}),
	't', 'jsonb answers carry isFallback');
is(sql(q{SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-03-custom-domain')
            @> '{"hasAccess": false, "isFallback": true, "accessDeniedReason": "ACCESS_DENIED_REASON_UNKNOWN"}'}),
	't', 'without a row: no access, reason UNKNOWN');
is(sql(q{SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 2)
            #>> '{entitlement,usageLimit}'}), '10.0', 'metered fallback: the limit');
is(sql(q{SELECT stigg_get_numeric_entitlement('customer-demo-01', 'feature-06-max-file-size') #>> '{entitlement,value}'}),
	'50', 'numeric fallback: the value');
is(sql(q{SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', requested_values => '{json}')->>'hasAccess'}),
	'false', 'enum fallback: requested values outside it are denied');
is(sql(q{SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 10),
                stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 11)}),
	't|f', 'metered fallback: the limit holds');
sql(q{SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 8)});
is(sql(q{SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 3)}), 'f',
	'metered fallback: queued usage still counts');
%stats = map { split /\|/ } split /\n/, sql('SELECT name, value FROM stigg.stats');
cmp_ok($stats{'fallbacks served'}, '>=', 8, "fallbacks are counted ($stats{'fallbacks served'})");

my $port = $sc->{grpc_port};
# a non-superuser cannot choose fallback for everyone
sql(q{CREATE ROLE app LOGIN});
($out, $err) = run(q{SET ROLE app; SET stigg.on_sidecar_error = 'error'});
like($err, qr/permission denied to set parameter "stigg.on_sidecar_error"/, 'only superusers choose');

# the sidecar is back: real answers at once (fallbacks were never cached)
$sc = StiggSidecar->start(port => $port);
is(sql(q{SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-03-custom-domain') @> '{"isFallback": false}'}),
	't', 'the sidecar answers again as soon as it is back');

$node->stop;
$sc->stop;
done_testing();
