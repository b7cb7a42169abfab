# stigg.usage_delivery = api: the worker delivers usage through the Stigg
# API with an idempotency key per row, so a batch resent after a crash is
# dropped by Stigg. The worker is killed with SIGKILL again and again while
# batches are in flight; per key, Stigg's totals equal the committed totals
# exactly.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use StiggSidecar;

my $kills = $ENV{STIGG_KILLS} // 10;
my $dir = PostgreSQL::Test::Utils::tempdir;
PostgreSQL::Test::Utils::append_to_file("$dir/key", "dev-server-key\n");
my @keys = (
	[ 'customer-enterprise', 'feature-09-api-calls' ],
	[ 'customer-enterprise', 'feature-02-campaigns' ],
	[ 'customer-demo-02',    'feature-13-ai-credits' ]);

# a slow API keeps batches in flight long enough for kills to land there
my $sc = StiggSidecar->start(faults => [ { method => 'graphql', action => 'delay', ms => 30 } ]);
my $node = StiggSidecar->new_node('exactly_once', $sc,
	'stigg.usage_delivery' => 'api',
	'stigg.api_url' => "'" . $sc->api_url . "'",
	'stigg.api_key_file' => "'$dir/key'",
	'stigg.batch_size' => 100,
	'stigg.retry_max_delay' => "'200ms'",
	restart_after_crash => 'on');
$node->safe_psql('postgres', 'CREATE SEQUENCE n; CREATE SEQUENCE e');

sub load
{
	my $case = join(' ', map { "WHEN $_ THEN '$keys[$_][0]|$keys[$_][1]'" } 0 .. $#keys);
	$node->safe_psql('postgres', qq{
		SELECT stigg_report_usage(split_part(k, '|', 1), split_part(k, '|', 2), 1,
		                          dimensions => jsonb_build_object('n', nextval('n')))
		  FROM (SELECT CASE g % 3 $case END AS k FROM generate_series(1, 600) g) s;
		SELECT stigg_report_event('customer-demo-01', 'page_view', '{}', 'ev-' || nextval('e'))
		  FROM generate_series(1, 20);});
	return;
}

my $in_send = 0;
for my $i (1 .. $kills)
{
	load();
	$node->poll_query_until('postgres', 'SELECT worker_pid IS NOT NULL FROM stigg.queue_status LIMIT 1')
	  or die 'no worker';
	my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM stigg.queue_status LIMIT 1');
	usleep(int(rand(100_000)));
	$in_send++ if $node->safe_psql('postgres', 'SELECT worker_state FROM stigg.queue_status LIMIT 1') =~ /sending/;
	kill 'KILL', $pid;
	$node->poll_query_until('postgres',
		"SELECT worker_pid IS NOT NULL AND worker_pid <> $pid FROM stigg.queue_status LIMIT 1")
	  or die "no worker after kill $i";
}
load();
$node->stop('immediate');
$node->start;
$node->safe_psql('postgres', "SELECT stigg_flush('120s')");
note "$kills kills, $in_send while the worker was sending";
cmp_ok($in_send, '>', 0, 'some kills landed during a send');

is($node->safe_psql('postgres', "SELECT count(*) FROM stigg.usage_queue WHERE state <> 'delivered'"), '0', 'drained');
my $m = $sc->get('/measurements');
note "the API dropped $m->{duplicateUsageKeys} resent usage rows by their idempotency key";
for my $k (@keys)
{
	my @ns = map { $_->{dimensions}{n} } @{ $sc->measurements(customerId => $k->[0], featureId => $k->[1]) };
	my %seen;
	$seen{$_}++ for @ns;
	my $c = $node->safe_psql('postgres',
		"SELECT count(*) FROM stigg.usage_queue WHERE customer_id = '$k->[0]' AND feature_id = '$k->[1]'");
	is(scalar(@ns), $c, "$k->[0] $k->[1]: Stigg applied exactly the $c committed rows");
	is(scalar(grep { $_ > 1 } values %seen), 0, "$k->[0] $k->[1]: none twice");
}
my %ev;
$ev{$_}++ for @{ $sc->events->{keys} };
is(scalar(keys %ev), ($kills + 1) * 20, 'every event accepted');
is(scalar(grep { $_ > 1 } values %ev), 0, 'no event twice');
like($node->safe_psql('postgres', "SELECT measurement_id FROM stigg.usage_queue ORDER BY id LIMIT 1"),
	qr/^[0-9a-f-]{36}$/, "the API's measurement id is kept");

$node->stop;
$sc->stop;
done_testing();
