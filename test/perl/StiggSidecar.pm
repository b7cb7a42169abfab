# StiggSidecar: start and drive a Stigg dev sidecar from TAP tests.
#
#   my $sc = StiggSidecar->start(faults => [{action => 'delay', ms => 50}]);
#   $node->append_conf('postgresql.conf', $sc->conf);
#   $sc->set_faults({action => 'hang'});
#   $sc->stats->{calls}{GetEntitlement};
#   $sc->stop;
#
# start() returns once the sidecar serves: it reads the READY line the
# sidecar prints when its ports are open, so no test sleeps to wait for it.
package StiggSidecar;

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

my $here = dirname(File::Spec->rel2abs(__FILE__));
my $script = "$here/../sidecar/stigg_dev_sidecar.py";
my $count = 0;

sub default_catalog { return "$here/../sidecar/demo-catalog.json"; }

sub start
{
	my ($class, %opt) = @_;
	my $catalog = $opt{catalog} // default_catalog();
	my $log = "$PostgreSQL::Test::Utils::log_path/sidecar_" . ++$count . ".log";
	my @cmd = ('/usr/bin/python3', $script, '--catalog', $catalog,
		'--daemon', '--log-file', $log);
	push @cmd, '--port', $opt{port} if $opt{port};
	push @cmd, '--tls-cert', $opt{tls_cert}, '--tls-key', $opt{tls_key}
	  if $opt{tls_cert};
	push @cmd, '--fault', encode_json($_) for @{ $opt{faults} // [] };
	push @cmd, '--api-tls-cert', $opt{api_tls_cert}, '--api-tls-key', $opt{api_tls_key}
	  if $opt{api_tls_cert};

	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err)
	  or die "dev sidecar did not start: $err";
	$out =~ /grpc_port=(\d+) control_port=(\d+) pid=(\d+) api_port=(\d+)/
	  or die "dev sidecar said: $out $err";
	my $self = bless {
		grpc_port => $1,
		control_port => $2,
		pid => $3,
		api_port => $4,
		log => $log,
		http => HTTP::Tiny->new(timeout => 30),
	}, $class;
	return $self;
}

sub port { return $_[0]->{grpc_port}; }
sub pid { return $_[0]->{pid}; }

# postgresql.conf lines that point the extension at this sidecar
sub conf
{
	my ($self, %opt) = @_;
	my $host = $opt{host} // 'localhost';
	return "stigg.sidecar_host = '$host'\nstigg.sidecar_port = $self->{grpc_port}\n";
}

# the API's address (plain HTTP unless started with api_tls_cert)
sub api_url
{
	my ($self, $scheme) = @_;
	return ($scheme // 'http') . "://localhost:$self->{api_port}";
}

sub _call
{
	my ($self, $method, $path, $body) = @_;
	my $url = "http://127.0.0.1:$self->{control_port}$path";
	my %args;
	if (defined $body)
	{
		$args{content} = encode_json($body);
		$args{headers} = { 'Content-Type' => 'application/json' };
	}
	my $res = $self->{http}->request($method, $url, \%args);
	die "dev sidecar control $method $path: $res->{status} $res->{content}"
	  unless $res->{success};
	return decode_json($res->{content});
}

sub get { my ($self, $path) = @_; return $self->_call('GET', $path); }
sub post { my ($self, $path, $body) = @_; return $self->_call('POST', $path, $body // {}); }

sub set_faults { my ($self, @rules) = @_; return $self->post('/faults', { faults => \@rules }); }
sub clear_faults { my ($self) = @_; return $self->_call('DELETE', '/faults'); }
sub stats { my ($self) = @_; return $self->get('/stats'); }
sub reset_stats { my ($self) = @_; return $self->post('/reset'); }
sub usage { my ($self) = @_; return $self->get('/usage'); }
sub events { my ($self) = @_; return $self->get('/events'); }

# every usage measurement the sidecar applied, oldest first
sub measurements
{
	my ($self, %filter) = @_;
	my $q = join('&', map { "$_=$filter{$_}" } sort keys %filter);
	return $self->get('/measurements' . ($q ? "?$q" : ''))->{measurements};
}
sub set_clock { my ($self, %c) = @_; return $self->post('/clock', \%c); }

sub calls
{
	my ($self, $method) = @_;
	return $self->stats->{calls}{$method} // 0;
}

# Stops the sidecar and waits until its process is gone, so that its port
# can be taken again.
sub stop
{
	my ($self, %opt) = @_;
	return unless $self->{pid};
	kill($opt{signal} // 'KILL', $self->{pid});
	for (1 .. 600)
	{
		last unless kill(0, $self->{pid});
		usleep(10_000);
	}
	delete $self->{pid};
	return;
}

# A started cluster with stigg preloaded and created, pointed at $sidecar,
# with a quick worker; %conf adds or overrides settings.
sub new_node
{
	my ($class, $name, $sidecar, %conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my %settings = (
		shared_preload_libraries => "'stigg'",
		'stigg.database' => "'postgres'",
		'stigg.retry_max_delay' => "'500ms'",
		'stigg.worker_naptime' => "'1h'",
		max_prepared_transactions => 10,
		%conf);
	$node->init(allows_streaming => delete $settings{allows_streaming});
	$node->append_conf('postgresql.conf',
		$sidecar->conf . join('', map { "$_ = $settings{$_}\n" } sort keys %settings));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION stigg');
	$node->poll_query_until('postgres', "SELECT worker_state = 'idle' FROM stigg.queue_status LIMIT 1")
	  or die 'the stigg worker did not become idle';
	return $node;
}

sub DESTROY
{
	my ($self) = @_;
	kill('KILL', $self->{pid}) if $self->{pid};
	return;
}

1;
