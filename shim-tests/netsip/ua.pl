#!/usr/bin/perl
# A small SIP user agent built on Net::SIP (libnet-sip-perl), used as an
# independent peer for the wisp interop tests.
#
#   ua.pl --uri sip:carol@abcd.com --listen 127.0.0.1:PORT
#         --registrar 127.0.0.1:PORT [--proxy 127.0.0.1:PORT]
#         [--transport udp|tcp] [--answer] [--call URI] [--reinvite]
#         [--hold-ms N] [--exit-after-calls N] [--timeout-ms N]
#         [--no-register] [--debug N]
#
# It prints one event per line on stdout, the same vocabulary as
# `wisp agent`:
#   listening IP:PORT       legs are bound
#   registered CODE         final response to REGISTER
#   call CODE               final response to our INVITE
#   answer-sdp SDP          m= and a= lines of the SDP answer in the 200, |-joined
#   reinvite CODE           final response to our re-INVITE
#   bye CODE                final response to our BYE
#   incoming-call FROM-URI  a new INVITE arrived (we answer 200 + SDP)
#   offer-sdp SDP           m= and a= lines of the SDP offer in that INVITE
#   incoming-ack            the ACK for our 2xx arrived
#   incoming-reinvite       an in-dialog INVITE arrived (answered 200 + SDP)
#   incoming-bye            the peer hung up
#   done                    everything asked for was done; exit 0 follows
#   error TEXT              something failed; exit 1 follows
#
# The SDP is not RTP: it describes a TCP data channel the way wisp does,
#   m=application PORT TCP wisp / a=setup:active|passive / a=connection:new
# so the bodies are built by hand and sent as raw application/sdp; the RTP
# machinery of Net::SIP::Simple::Call is bypassed by driving
# Net::SIP::Endpoint directly.

use strict;
use warnings;
use Getopt::Long qw(GetOptions);
use IO::Socket::INET;
use Net::SIP qw(:all);
use Net::SIP::Util qw(sip_hdrval2parts);

$| = 1;

my %opt = (
    'transport' => 'udp',
    'hold-ms' => 500,
    'timeout-ms' => 60000,
    'exit-after-calls' => 0,
    'debug' => 0,
);
GetOptions(\%opt,
    'uri=s', 'listen=s', 'registrar=s', 'proxy=s', 'transport=s',
    'answer', 'call=s', 'reinvite', 'hold-ms=i', 'exit-after-calls=i',
    'timeout-ms=i', 'no-register', 'debug=i', 'expires=i',
) or usage();
usage() unless $opt{uri} && $opt{listen} && ($opt{registrar} || $opt{proxy});
usage() unless $opt{transport} =~ m{^(udp|tcp)$};
Net::SIP::Debug->level($opt{debug}) if $opt{debug};

sub usage {
    print STDERR "usage: $0 --uri SIPURI --listen IP:PORT --registrar IP:PORT"
        . " [--proxy IP:PORT] [--transport udp|tcp] [--answer] [--call URI]"
        . " [--reinvite] [--hold-ms N] [--exit-after-calls N] [--timeout-ms N]\n";
    exit 2;
}

sub event { print join(' ', @_), "\n" }

sub fail {
    event('error', @_);
    exit 1;
}

my ($lip, $lport) = $opt{listen} =~ m{^([\d.]+):(\d+)$}
    or fail("bad --listen $opt{listen}");
my ($user) = $opt{uri} =~ m{^sips?:([^@]+)@} or fail("bad --uri $opt{uri}");
my $proto = $opt{transport};
my $proxy = $opt{proxy} || $opt{registrar};
my $registrar = $opt{registrar} || $opt{proxy};
my $contact = "<sip:$user\@$lip:$lport"
    . ($proto eq 'tcp' ? ';transport=tcp' : '') . '>';

my $leg = Net::SIP::Leg->new(proto => $proto, addr => $lip, port => $lport)
    or fail("cannot bind $proto:$opt{listen}: $!");
my $ua = Net::SIP::Simple->new(
    leg => $leg,
    outgoing_proxy => "sip:$proxy;transport=$proto",
    registrar => "sip:$registrar;transport=$proto",
    from => $opt{uri},
    contact => $contact,
);
my $endpoint = $ua->{endpoint};
event('listening', "$lip:$lport");

# A real listening TCP socket, so that the port in our SDP is not a lie.
my $data_listener = IO::Socket::INET->new(
    Listen => 1, LocalAddr => $lip, LocalPort => 0, Proto => 'tcp',
    ReuseAddr => 1,
) or fail("cannot open data-channel listener: $!");
my $data_port = $data_listener->sockport;

my $sess_version = 1;
sub sdp {
    my ($port, $setup) = @_;
    my $id = $$;
    my $v = $sess_version++;
    return join('', map { "$_\r\n" }
        'v=0',
        "o=- $id $v IN IP4 $lip",
        's=-',
        "c=IN IP4 $lip",
        't=0 0',
        "m=application $port TCP wisp",
        "a=setup:$setup",
        'a=connection:new',
    );
}

# The m= line and the a= lines of an SDP body, joined with '|'.
sub m_line {
    my $packet = shift;
    my $body = ($packet->as_parts)[3] // q{};
    my @l = grep { m{^[ma]=} } split(m{\r?\n}, $body);
    return @l ? join('|', @l) : 'none';
}

sub uri_of {
    my ($hdr) = @_;
    my ($addr) = sip_hdrval2parts(from => $hdr);
    $addr = $1 if $addr =~ m{<([^>]+)>};
    $addr =~ s{;.*$}{};
    return $addr;
}

my $deadline_hit = 0;
$ua->add_timer($opt{'timeout-ms'} / 1000, sub { $deadline_hit = 1 });

sub wait_for {
    my ($what, $var) = @_;
    $ua->loop(\$$var, \$deadline_hit);
    fail("timeout waiting for $what") if !$$var;
}

# --- registration ---------------------------------------------------------
unless ($opt{'no-register'}) {
    my $reg_code;
    $endpoint->register(
        from => $opt{uri},
        registrar => "sip:$registrar;transport=$proto",
        contact => $contact,
        expires => $opt{expires} // 600,
        callback => sub {
            my ($ep, $ctx, $errno, $code, $packet) = @_;
            $reg_code = $code || "errno-$errno";
        },
    );
    wait_for('REGISTER response', \$reg_code);
    event('registered', $reg_code);
    fail("registration failed") unless $reg_code =~ m{^2};
}

# --- answering side ---------------------------------------------------------
my %answered;    # call-id => 1 once a 2xx went out
my $calls_done = 0;
my $all_done = 0;

if ($opt{answer}) {
    $endpoint->set_application(sub {
        my ($ep, $ctx, $request, $rleg, $from) = @_;
        my $method = $request->method;
        my $callid = $request->get_header('call-id');
        if ($method eq 'INVITE') {
            if ($answered{$callid}) {
                event('incoming-reinvite');
            } else {
                event('incoming-call', uri_of(scalar $request->get_header('from')));
                event('offer-sdp', m_line($request));
            }
            $answered{$callid} = 1;
            my $resp = $request->create_response('200', 'OK',
                { 'content-type' => 'application/sdp', contact => $contact },
                sdp($data_port, 'passive'));
            $ep->new_response($ctx, $resp, $rleg, $from);
        } elsif ($method eq 'ACK') {
            event('incoming-ack');
        } elsif ($method eq 'BYE' || $method eq 'CANCEL') {
            # Net::SIP::Endpoint already answered 200
            event($method eq 'BYE' ? 'incoming-bye' : 'incoming-cancel');
            delete $answered{$callid};
            $calls_done++;
            $all_done = 1 if $opt{'exit-after-calls'}
                && $calls_done >= $opt{'exit-after-calls'};
        } elsif ($method eq 'OPTIONS') {
            $ep->new_response($ctx, $request->create_response('200', 'OK'),
                $rleg, $from);
            $ep->close_context($ctx);
        } else {
            $ep->new_response($ctx,
                $request->create_response('501', 'Not Implemented'),
                $rleg, $from);
            $ep->close_context($ctx);
        }
    });
}

# --- calling side -----------------------------------------------------------
if ($opt{call}) {
    my $to = $opt{call};
    my ($code, $final);
    my $cb = sub {
        my ($ep, $ctx, $errno, $c, $packet, $rleg, $from, $ack) = @_;
        if ($packet && $packet->is_request) {
            # in-dialog request from the callee (we do not expect any but BYE)
            if ($packet->method eq 'BYE') {
                event('incoming-bye');
                $final = 'bye-from-peer';
            }
            return;
        }
        return if $c && $c =~ m{^1};    # provisional
        $code = $c || "errno-$errno";
        $final = $packet;
    };
    my $ctx = $endpoint->invite(
        { from => $opt{uri}, to => "<$to>", contact => $contact },
        $cb, sdp(9, 'active'),
        'content-type' => 'application/sdp',
    );
    wait_for('INVITE response', \$code);
    event('call', $code);
    fail("call failed") unless $code =~ m{^2};
    event('answer-sdp', m_line($final));

    $ua->loop($opt{'hold-ms'} / 1000);

    if ($opt{reinvite}) {
        ($code, $final) = ();
        $endpoint->new_request('INVITE', $ctx, $cb, sdp(9, 'active'),
            'content-type' => 'application/sdp');
        wait_for('re-INVITE response', \$code);
        event('reinvite', $code);
        fail("re-INVITE failed") unless $code =~ m{^2};
        $ua->loop($opt{'hold-ms'} / 1000);
    }

    my $bye_code;
    $endpoint->new_request('BYE', $ctx, sub {
        my ($ep, $c, $errno, $rc) = @_[0, 1, 2, 3];
        $bye_code = $rc || "errno-$errno";
    });
    wait_for('BYE response', \$bye_code);
    event('bye', $bye_code);
    fail("BYE failed") unless $bye_code =~ m{^2};
    $calls_done++;
    $all_done = 1 unless $opt{answer};
}

if ($opt{answer}) {
    if ($opt{'exit-after-calls'}) {
        wait_for("$opt{'exit-after-calls'} calls", \$all_done);
    } else {
        # serve until killed (or until --timeout-ms)
        $ua->loop(\$deadline_hit);
        exit 0;
    }
}

event('done');
exit 0;
