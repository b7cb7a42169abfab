# Load: 8 pgbench clients calling the sidecar for a while (STIGG_LOAD_SECONDS,
# default 60) with no error, and a backend whose open files and memory do
# not grow with the number of calls, including calls that fail.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use StiggSidecar;

my $seconds = $ENV{STIGG_LOAD_SECONDS} // 60;
my $sc = StiggSidecar->start;
my $node = PostgreSQL::Test::Cluster->new('load');
$node->init;
# every check a round trip: this test is about the transport's resources
$node->append_conf('postgresql.conf', $sc->conf . "max_connections = 30\nstigg.cache_ttl = 0\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION stigg');

# ---- 8 clients for a while
$node->pgbench(
	"--no-vacuum --client=8 --jobs=2 --time=$seconds --protocol=prepared",
	0,
	[ qr{actually processed: [1-9]\d*}, qr{number of failed transactions: 0 } ],
	[qr{^$}],
	'8 clients, no error',
	{
		'001_checks' => q{
\set n random(1, 4)
SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => :n);
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => :n);
SELECT count(*) FROM stigg_entitlements('customer-demo-01');
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', ARRAY['csv']);
}
	});
my $calls = $sc->stats->{calls};
cmp_ok($calls->{GetEntitlement}, '>', 100, "the sidecar served $calls->{GetEntitlement} GetEntitlement calls");

# ---- one backend: open files and memory per call
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');

sub fd_targets
{
	opendir(my $d, "/proc/$pid/fd") or die "no /proc/$pid/fd: $!";
	return sort map { readlink("/proc/$pid/fd/$_") // '?' } grep { !/^\./ } readdir $d;
}
sub fds { return scalar(my @t = fd_targets()); }
sub rss_kb
{
	open(my $f, '<', "/proc/$pid/status") or die;
	while (<$f>) { return $1 if /^VmRSS:\s+(\d+)/; }
	die 'no VmRSS';
}
my $memory_sql = 'SELECT sum(total_bytes) FROM pg_backend_memory_contexts';
my $batch = q{SELECT count(*) FROM generate_series(1, 2000) g
              WHERE stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => g % 5)
                 OR stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates') IS NULL};

# warm up: the connection, and the catalogs the queries here open
$bg->query_safe($batch);
$bg->query_safe($memory_sql);
my ($fds0, $rss0, $mem0) = (fds(), rss_kb(), $bg->query_safe($memory_sql));
$bg->query_safe($batch) for 1 .. 5;
my ($fds1, $rss1, $mem1) = (fds(), rss_kb(), $bg->query_safe($memory_sql));
note "after 20000 more calls: fds $fds0 -> $fds1, RSS $rss0 -> $rss1 kB, contexts $mem0 -> $mem1 bytes";
is($fds1, $fds0, 'open files do not grow with calls') or diag join("\n", fd_targets());
cmp_ok($rss1 - $rss0, '<', 2048, 'RSS grows by less than 2 MB over 20000 calls (about 100 bytes a call at most)');
cmp_ok($mem1 - $mem0, '<=', 0, 'PostgreSQL memory contexts do not grow with calls');

# failures must not leak either: errors, timeouts and reconnects
$sc->set_faults({ method => 'GetEntitlement', action => 'error', code => 'UNAVAILABLE' });
$bg->{stderr} = '';
$bg->query(q{DO $$ BEGIN FOR i IN 1..500 LOOP BEGIN
               PERFORM stigg_has_access('customer-demo-01', 'feature-04-analytics');
             EXCEPTION WHEN connection_failure THEN NULL; END; END LOOP; END $$});
$sc->set_faults({ method => 'GetEntitlement', action => 'garbage' });
$bg->query(q{DO $$ BEGIN FOR i IN 1..500 LOOP BEGIN
               PERFORM stigg_has_access('customer-demo-01', 'feature-04-analytics');
             EXCEPTION WHEN protocol_violation THEN NULL; END; END LOOP; END $$});
# deadlines and a stopped sidecar tear the connection down each time
$sc->set_faults({ method => 'GetEntitlement', action => 'delay', ms => 100 });
$bg->query(q{SET stigg.timeout = 5});
$bg->query(q{DO $$ BEGIN FOR i IN 1..200 LOOP BEGIN
               PERFORM stigg_has_access('customer-demo-01', 'feature-04-analytics');
             EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$});
$bg->query(q{RESET stigg.timeout});
$sc->clear_faults;
my $port = $sc->port;
$sc->stop;
$bg->query(q{DO $$ BEGIN FOR i IN 1..500 LOOP BEGIN
               PERFORM stigg_has_access('customer-demo-01', 'feature-04-analytics');
             EXCEPTION WHEN connection_failure THEN NULL; END; END LOOP; END $$});
is($bg->{stderr}, '', 'every failure was the expected kind');
$sc = StiggSidecar->start(port => $port);
$bg->query_safe($batch);
my ($fds2, $rss2) = (fds(), rss_kb());
note "after 1700 failed calls: fds $fds1 -> $fds2, RSS $rss1 -> $rss2 kB";
cmp_ok($fds2, '<=', $fds1, 'failed calls leave no open files behind');
cmp_ok($rss2 - $rss1, '<', 2048, 'failed calls do not grow RSS');

# ---- the sidecar restarted mid-run: the next call after it is back works
{
	$sc->stop;
	$sc = StiggSidecar->start(port => $port);
	is($bg->query_safe(q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')}), 't',
		'first call after a restart succeeds');
}

$bg->quit;
$node->stop;
$sc->stop;
done_testing();
