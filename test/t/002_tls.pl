# A TLS dev sidecar with a certificate made here: accepted with the right
# stigg.sidecar_ca_file, refused with a clear error otherwise.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use StiggSidecar;

my $dir = PostgreSQL::Test::Utils::tempdir;

# A CA, and a server certificate it signs for localhost and 127.0.0.1.
sub make_ca
{
	my ($name) = @_;
	system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
		'-days', '2', '-subj', "/CN=$name", '-keyout', "$dir/$name.key",
		'-out', "$dir/$name.pem");
	return "$dir/$name.pem";
}
my $ca = make_ca('stigg-test-ca');
my $other_ca = make_ca('some-other-ca');
open(my $ext, '>', "$dir/san.ext") or die;
print $ext "subjectAltName = DNS:localhost, IP:127.0.0.1\n";
close $ext;
system_or_bail('openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
	'-subj', '/CN=localhost', '-keyout', "$dir/server.key", '-out', "$dir/server.csr");
system_or_bail('openssl', 'x509', '-req', '-in', "$dir/server.csr", '-days', '2',
	'-CA', $ca, '-CAkey', "$dir/stigg-test-ca.key", '-CAcreateserial',
	'-extfile', "$dir/san.ext", '-out', "$dir/server.pem");

my $sc = StiggSidecar->start(tls_cert => "$dir/server.pem", tls_key => "$dir/server.key");
my $plain = StiggSidecar->start;

my $node = PostgreSQL::Test::Cluster->new('tls');
$node->init;
$node->append_conf('postgresql.conf', $sc->conf . "stigg.sidecar_tls = on\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION stigg');

my $check = q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')};

sub try_with
{
	my ($settings) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$settings\n$check");
	return ($out, $err);
}

my ($out, $err) = try_with("SET stigg.sidecar_ca_file = '$ca';");
is($out, 't', 'TLS sidecar: accepted with the CA that signed it') or diag $err;

($out, $err) = try_with(q{SET stigg.sidecar_ca_file = '';});
like($err, qr/08006: could not establish a TLS connection to the stigg sidecar at localhost:\d+/,
	'TLS sidecar: refused against the system trust store');
like($err, qr/HINT:  Check that stigg.sidecar_ca_file names the CA/, 'TLS refusal: a hint');

($out, $err) = try_with("SET stigg.sidecar_ca_file = '$other_ca';");
like($err, qr/08006: could not establish a TLS connection/, 'TLS sidecar: refused with another CA');

($out, $err) = try_with("SET stigg.sidecar_ca_file = '$dir/no-such-file.pem';");
like($err, qr/08006: could not establish a TLS connection.*\n.*DETAIL: .*(no-such-file|CA cert|certificate)/i,
	'a missing CA file says so');

($out, $err) = try_with("SET stigg.sidecar_ca_file = '$ca'; SET stigg.sidecar_host = '127.0.0.1';");
is($out, 't', 'TLS sidecar by IP address: the certificate names it');

# TLS on, plaintext sidecar; and TLS off, TLS sidecar: errors, not hangs
($out, $err) = try_with("SET stigg.sidecar_ca_file = '$ca'; SET stigg.sidecar_port = " . $plain->port . ';');
like($err, qr/ERROR:  08(006|P01): /, 'TLS client, plaintext sidecar: an error');
($out, $err) = try_with('SET stigg.sidecar_tls = off;');
like($err, qr/ERROR:  08(006|P01): /, 'plaintext client, TLS sidecar: an error');

# one session, many calls, one TLS connection
$sc->reset_stats;
($out, $err) = try_with("SET stigg.sidecar_ca_file = '$ca'; SELECT count(*) FROM generate_series(1, 20) WHERE stigg_has_access('customer-demo-01', 'feature-04-analytics');");
like($out, qr/^20$/m, '20 calls over TLS');
is(scalar @{ $sc->stats->{peers} }, 1, 'TLS calls of a backend share one connection');

$node->stop;
$sc->stop;
$plain->stop;
done_testing();
